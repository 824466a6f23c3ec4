"""Head-mode reply -> the flat buffers Blender's ``foreach_set`` wants (bpy-free, numpy only).

A head reply (docs: the head table in ``wire/protocol.py``) carries polygons of 3 or 4 corners with
per-corner UVs, a material per polygon, and one vertex-delta array per expression. Everything is
validated here, because Blender trusts ``foreach_set`` data: a bad index crashes it instead of raising.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .meshdata import MeshArrays

RIGID_TOLERANCE = 1e-3  # pose rotations must be orthonormal to this (a float32 4x4 through JSON stays far inside)


def head_mesh_arrays(arrays: Mapping[str, np.ndarray], material_count: int) -> MeshArrays:
    """Polygons of mixed size (triangles and quads) with per-corner UVs and material indices."""
    vertices = np.asarray(arrays["vertices"])
    sizes = np.asarray(arrays["polygon_sizes"])
    corners = np.asarray(arrays["polygon_vertices"])
    uvs = np.asarray(arrays["corner_uvs"])
    materials = np.asarray(arrays["polygon_material"])
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise ValueError("vertices contain NaN or infinity")
    if sizes.ndim != 1 or len(sizes) == 0 or not np.isin(sizes, (3, 4)).all():
        raise ValueError("polygon_sizes must be a non-empty list of 3s and 4s")
    total = int(sizes.sum(dtype=np.int64))
    if corners.shape != (total,) or not np.issubdtype(corners.dtype, np.integer):
        raise ValueError(f"polygon_vertices must be {total} integers (the sum of polygon_sizes), got "
                         f"{corners.shape} {corners.dtype}")
    if corners.min() < 0 or corners.max() >= len(vertices):
        raise ValueError(f"polygon_vertices must lie in [0, {len(vertices)}), got [{corners.min()}, {corners.max()}]")
    if uvs.shape != (total, 2) or not np.isfinite(uvs).all():
        raise ValueError(f"corner_uvs must be finite ({total}, 2), got {uvs.shape}")
    if materials.shape != sizes.shape or not np.issubdtype(materials.dtype, np.integer):
        raise ValueError(f"polygon_material must be ({len(sizes)},) integers, got {materials.shape} {materials.dtype}")
    if materials.max() >= material_count:
        raise ValueError(f"polygon_material indexes {materials.max() + 1} materials, meta names {material_count}")
    loop_total = sizes.astype(np.int32)
    loop_start = np.zeros(len(sizes), np.int32)
    np.cumsum(loop_total[:-1], out=loop_start[1:])
    return MeshArrays(
        co=np.ascontiguousarray(vertices, dtype=np.float32).ravel(),
        vertex_index=np.ascontiguousarray(corners, dtype=np.int32),
        loop_start=loop_start,
        loop_total=loop_total,
        loop_uv=np.ascontiguousarray(uvs, dtype=np.float32).ravel(),
        use_smooth=np.ones(len(sizes), dtype=bool),
        material_index=materials.astype(np.int32),
    )


@dataclass
class ShapeKeys:
    """Absolute shape-key coordinates (basis + delta), one flat float32 row per expression."""

    names: list
    coords: np.ndarray   # (E, V*3) float32
    weights: np.ndarray  # (E,) float32 in [0, 1]


def shape_keys(vertices: np.ndarray, deltas: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> ShapeKeys:
    """Blender stores keys as absolute positions: neutral vertices plus each expression's delta."""
    vertices = np.asarray(vertices, dtype=np.float32)
    deltas = np.asarray(deltas)
    weights = np.asarray(weights, dtype=np.float32)
    names = [str(name) for name in names]
    if deltas.ndim != 3 or deltas.shape[1:] != vertices.shape:
        raise ValueError(f"expression_deltas must be (E, {len(vertices)}, 3), got {deltas.shape}")
    if not (len(names) == len(weights) == len(deltas)):
        raise ValueError(f"{len(deltas)} expression deltas, {len(weights)} weights and {len(names)} names")
    if len(set(names)) != len(names) or "Basis" in names or not all(names):
        raise ValueError("expression names must be unique, non-empty and not 'Basis'")
    if not (np.isfinite(deltas).all() and np.isfinite(weights).all()):
        raise ValueError("expression deltas or weights contain NaN or infinity")
    coords = np.add(vertices[None], deltas, dtype=np.float32)
    return ShapeKeys(names=names, coords=coords.reshape(len(deltas), -1),
                     weights=np.clip(weights, 0.0, 1.0))


def pose_rows(meta: Mapping) -> list:
    """``meta["pose"]["matrix"]`` as four rows, checked to be a rigid transform (no scale, no shear)."""
    try:
        matrix = np.asarray(meta["pose"]["matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ValueError("head meta lacks a numeric pose.matrix") from None
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"pose.matrix must be a finite 4x4, got shape {matrix.shape}")
    rotation = matrix[:3, :3]
    if (not np.allclose(matrix[3], (0, 0, 0, 1), atol=RIGID_TOLERANCE)
            or not np.allclose(rotation @ rotation.T, np.eye(3), atol=RIGID_TOLERANCE)
            or np.linalg.det(rotation) < 0):
        raise ValueError("pose.matrix must be a rotation plus translation (rows 4x4, last row 0 0 0 1)")
    return matrix.tolist()


def vertex_values(values, shape: tuple, name: str) -> np.ndarray:
    """Finite float32 per-vertex values of ``shape`` (a point attribute), or ValueError naming ``name``."""
    array = np.asarray(values, dtype=np.float32)
    if array.shape != tuple(shape) or not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite {tuple(shape)}, got {array.shape}")
    return array


def irradiance_colours(irradiance, vertex_count: int) -> np.ndarray:
    """(V, 3) linear irradiance -> (V, 4) float32 RGBA for a point colour attribute."""
    values = vertex_values(irradiance, (vertex_count, 3), "vertex_irradiance")
    return np.concatenate([np.maximum(values, 0.0), np.ones((vertex_count, 1), np.float32)], axis=1)
