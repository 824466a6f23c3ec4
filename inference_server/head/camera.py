"""The photo's camera and the head's pose in it.

Camera frame: x right, y down, z forward (OpenCV). A head vertex ``X`` (model frame: +Y up, +Z out
of the face) lands at ``R @ X + t``; a frontal head has ``R = FRONTAL`` (x kept, y and z flipped).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from addon.wire.axes import FRONTAL


@dataclass(frozen=True)
class Camera:
    """Pinhole camera in pixels, square pixels, no distortion."""
    focal: float
    principal: tuple[float, float]
    size: tuple[int, int]          # (height, width)

    @classmethod
    def default_for(cls, size: tuple[int, int], focal: float | None = None) -> "Camera":
        """Principal point at the image centre; focal defaults to the longer side times
        ``DEFAULT_FOCAL_FACTOR`` (a ~50 mm full-frame equivalent)."""
        height, width = size
        return cls(float(focal or DEFAULT_FOCAL_FACTOR * max(height, width)), (width / 2, height / 2), (height, width))


DEFAULT_FOCAL_FACTOR = 1.4


def head_rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Camera-from-model rotation for a head turned by yaw (toward the subject's left, i.e. the
    nose moves to image right, for positive yaw), pitch (chin up for positive) and roll (in the
    image plane) — applied to the model, then made frontal."""
    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    yaw = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    pitch = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    roll = np.array([[math.cos(r), math.sin(r), 0], [-math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return FRONTAL @ roll @ pitch @ yaw


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of the relative rotation between two rotation matrices."""
    cos = (np.trace(a.T @ b) - 1) / 2
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))
