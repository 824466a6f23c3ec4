"""Left/right vertex correspondence of the neutral head: vertex ``index[i]`` is vertex *i* mirrored
in x (the model's symmetry plane is x = 0). Used to fill the texture of the side a photo did not
see from the side it did, by the cues network's mirror augmentation and mirror-averaged prediction
(``identity_mirror``), and by tests that mirror a photo.

Nearest vertex to the mirrored position, matched on the position *and* the mean centre of the
vertex's polygons: the eyelids, lacrimal shells and eyelashes have coincident vertices on different
sheets, which position alone cannot tell apart.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from .model import HeadModel

TOLERANCE_M = 1e-4    # a match further than 0.1 mm (position + neighbourhood) is not a mirror image
MIN_MATCHED = 0.98    # below this the model is not the symmetric head this module assumes
FLIP_X = np.array([-1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Mirror:
    index: np.ndarray     # (V,) int32 mirror vertex of each vertex
    distance: np.ndarray  # (V,) float32 mismatch of the match, metres (position and neighbourhood)
    matched: np.ndarray   # (V,) bool close enough, same (or opposite-side) part, and index[index[i]] == i

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Per-vertex values of the mirrored head: ``out[i] = values[index[i]]``."""
        return values[self.index]


def mirror_of(model: "HeadModel") -> Mirror:
    """Left/right vertex correspondence of the model's neutral head, computed once per model."""
    mirror = _MIRRORS.get(model)
    if mirror is None:
        mirror = _MIRRORS[model] = _find_mirror(model)
    return mirror


_MIRRORS: "weakref.WeakKeyDictionary[HeadModel, Mirror]" = weakref.WeakKeyDictionary()


def identity_mirror(model: "HeadModel") -> np.ndarray:
    """(I, I) float32 P with ``P @ c`` the identity coefficients of the mirror image of identity ``c``:
    least squares through the basis, exact when the modes span their own mirror images (ICT-FaceKit's
    nearly do: 0.03 mm RMS off on the face for random N(0, 1) identities of 3-4 mm). Computed once
    per model (a 0.6-1 s solve) and shared: callers must not write to it."""
    matrix = _IDENTITY_MIRRORS.get(model)
    if matrix is None:
        basis = model.id_deltas.astype(np.float64)
        flipped = basis[:, mirror_of(model).index] * FLIP_X
        flat, flipped = basis.reshape(len(basis), -1).T, flipped.reshape(len(basis), -1).T
        matrix = _IDENTITY_MIRRORS[model] = np.linalg.lstsq(flat, flipped, rcond=None)[0].T.astype(np.float32)
    return matrix


_IDENTITY_MIRRORS: "weakref.WeakKeyDictionary[HeadModel, np.ndarray]" = weakref.WeakKeyDictionary()


def _find_mirror(model: "HeadModel") -> Mirror:
    vertices = model.vertices.astype(np.float64)
    ring = _ring_centres(vertices, model.faces, model.face_poly)
    features = np.hstack([vertices, ring])
    distance, index = cKDTree(features).query(np.hstack([vertices * FLIP_X, ring * FLIP_X]))
    index = index.astype(np.int32)
    parts = np.array(model.part_names)
    opposite = np.array([_other_side(name) for name in model.part_names])
    same_part = parts[model.vertex_part[index]] == opposite[model.vertex_part]
    matched = (distance < TOLERANCE_M) & same_part & (index[index] == np.arange(len(index)))
    if matched.mean() < MIN_MATCHED:
        raise ValueError(f"the neutral head is not left/right symmetric: only {matched.mean():.1%} of its "
                         "vertices have a mirror image")
    return Mirror(index, distance.astype(np.float32), matched)


def _ring_centres(vertices: np.ndarray, faces: np.ndarray, face_poly: np.ndarray) -> np.ndarray:
    """Mean centre of the upstream polygons around each vertex. Polygons, not triangles: a quad's
    split diagonal is not mirror-symmetric, its four corners are."""
    keys = np.unique(np.repeat(face_poly.astype(np.int64), 3) * len(vertices) + faces.ravel())
    pairs = np.stack([keys // len(vertices), keys % len(vertices)], axis=1)  # unique (polygon, vertex)
    corners = np.bincount(pairs[:, 0])[:, None]
    centres = np.stack([np.bincount(pairs[:, 0], vertices[pairs[:, 1], k]) for k in range(3)], axis=1) / np.maximum(corners, 1)
    total = np.stack([np.bincount(pairs[:, 1], centres[pairs[:, 0], k], len(vertices)) for k in range(3)], axis=1)
    count = np.bincount(pairs[:, 1], minlength=len(vertices))[:, None]
    return np.where(count > 0, total / np.maximum(count, 1), vertices)


def _other_side(part: str) -> str:
    if part.endswith("_left"):
        return part[:-5] + "_right"
    if part.endswith("_right"):
        return part[:-6] + "_left"
    return part
