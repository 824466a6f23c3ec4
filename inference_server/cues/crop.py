"""The network's input: a square, roll-aligned crop framed by the face's 478 FaceMesh landmarks.

Training renders frame the crop from the true landmark points (with jitter standing in for
FaceMesh's error) and inference from FaceMesh's, so both see the face at the same place and size.
"""
from __future__ import annotations

import math

import numpy as np

from ..landmarks import SURFACE_LANDMARKS, eye_centres

INPUT_SIDE = 128          # crop pixels
OUTPUT_STRIDE = 2         # the maps come out at INPUT_SIDE / OUTPUT_STRIDE
MARGIN = 1.3              # crop side / the larger side of the roll-aligned landmark box


def crop_transform(points_px: np.ndarray, side: int = INPUT_SIDE, jitter: np.ndarray | None = None) -> np.ndarray:
    """2x3 similarity taking photo pixels to crop pixels. ``jitter`` = (dx, dy, log scale, angle in
    radians), relative to the crop side, perturbs the frame (training only)."""
    points = np.asarray(points_px, np.float64)[:SURFACE_LANDMARKS, :2]
    eyes = eye_centres(points)
    roll = math.atan2(eyes[1][1] - eyes[0][1], eyes[1][0] - eyes[0][0])
    dx, dy, log_scale, angle = (0.0, 0.0, 0.0, 0.0) if jitter is None else jitter
    roll += angle
    cos, sin = math.cos(-roll), math.sin(-roll)
    rotation = np.array([[cos, -sin], [sin, cos]])
    upright = points @ rotation.T
    low, high = upright.min(0), upright.max(0)
    size = MARGIN * float((high - low).max()) * math.exp(log_scale)
    centre = (low + high) / 2 + np.array([dx, dy]) * size
    scale = side / size
    return np.hstack([scale * rotation, (side / 2 - scale * centre)[:, None]])


def scale_of(transform: np.ndarray) -> float:
    """Crop pixels per photo pixel."""
    return math.hypot(transform[0, 0], transform[1, 0])
