"""Which model vertices are bare skin: the face minus the features whose colour is not skin's
(eyes and lids' lashes, brows, lips, nostrils) — where lighting can be read from the shading.

Regions are drawn on the neutral head (model frame, metres) from the 68 landmarks, so they follow
any identity and stay put under expressions (vertex ids do not move).
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from ..meshing import points_in_polygon

if TYPE_CHECKING:
    from .model import HeadModel

EYE_MARGIN_M = 0.006        # lids and lashes around the eye opening
BROW_HALF_WIDTH_M = 0.008   # brows are ~1.5 cm tall at the centre
LIP_MARGIN_M = 0.002
NOSTRIL_RADIUS_M = 0.007
EYES = (list(range(36, 42)), list(range(42, 48)))   # Multi-PIE 68-point indices
BROWS = (list(range(17, 22)), list(range(22, 27)))
LIPS = list(range(48, 60))
NOSE_BOTTOM = list(range(31, 36))
NOSE_TIP = 30


def skin_mask(model: "HeadModel") -> np.ndarray:
    """(V,) bool: ``face_mask`` without eyes, brows, lips and nostrils."""
    return _skin_mask(model).copy()


@lru_cache(maxsize=4)  # per model (identity-hashed): ~80 ms, and every refinement asks
def _skin_mask(model: "HeadModel") -> np.ndarray:
    points = model.vertices.astype(np.float64)
    marks = points[model.landmarks68]
    xy = points[:, :2]
    feature = np.zeros(len(points), bool)
    for eye in EYES:
        feature |= _near_polygon(xy, marks[eye, :2], EYE_MARGIN_M)
    for brow in BROWS:
        feature |= _polyline_distance(xy, marks[brow, :2]) < BROW_HALF_WIDTH_M
    feature |= _near_polygon(xy, marks[LIPS, :2], LIP_MARGIN_M)
    below_tip = points[:, 1] < marks[NOSE_TIP, 1]
    nostrils = np.linalg.norm(points[:, None, :] - marks[None, NOSE_BOTTOM], axis=2).min(1) < NOSTRIL_RADIUS_M
    feature |= nostrils & below_tip
    return model.face_mask & ~feature


def core_mask(model: "HeadModel") -> np.ndarray:
    """(V,) bool: the central face between the eyes' outer corners, from the chin to the brows —
    the skin that hair, beards and collars cover least (the lighting's first estimate)."""
    points, marks = model.vertices, model.vertices[model.landmarks68]
    half_width = np.abs(marks[[36, 45], 0]).max()
    return (model.face_mask & (np.abs(points[:, 0]) < half_width) & (points[:, 1] > marks[8, 1])
            & (points[:, 1] < marks[17:27, 1].max()))


def _near_polygon(points: np.ndarray, polygon: np.ndarray, margin: float) -> np.ndarray:
    closed = np.vstack([polygon, polygon[:1]])
    return points_in_polygon(points, polygon) | (_polyline_distance(points, closed) < margin)


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance of each 2D point to the polyline through ``line`` (K, 2)."""
    best = np.full(len(points), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        t = np.clip(((points - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1))
    return best
