"""Reply arrays -> the flat arrays Blender's ``foreach_set`` wants (bpy-free, numpy only).

Everything that can be computed without Blender lives here so it is unit-tested in plain Python
and the bpy side stays a handful of ``foreach_set`` calls.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..wire import options

BuildSettings = options.config_class(
    "BuildSettings", options.on_side(options.BUILD),
    "Blender-side settings of a build (modifiers); fields and defaults from ``addon.wire.options``.")

DETAIL_MIDLEVEL = 0.5  # the detail map is stored as MIDLEVEL + detail, so the Displace modifier's midlevel is this


@dataclass
class MeshArrays:
    """Flat, contiguous buffers ready for ``foreach_set`` (float32 / int32 / bool)."""

    co: np.ndarray            # (V*3,) float32 vertex coordinates
    vertex_index: np.ndarray  # (L,) int32 loop -> vertex
    loop_start: np.ndarray    # (F,) int32
    loop_total: np.ndarray    # (F,) int32 corners per polygon (3 for face mode's triangles)
    loop_uv: np.ndarray       # (L*2,) float32 per-loop UVs
    use_smooth: np.ndarray    # (F,) bool, all True
    material_index: np.ndarray | None = None  # (F,) int32 material slot per polygon; None: one material

    @property
    def vertex_count(self) -> int:
        return len(self.co) // 3

    @property
    def polygon_count(self) -> int:
        return len(self.loop_start)


def mesh_arrays(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray) -> MeshArrays:
    """Validate a reply's triangle mesh and expand per-vertex UVs to per-loop UVs.

    Validation matters because Blender trusts ``foreach_set`` data: an out-of-range index would
    crash it instead of raising.
    """
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    uvs = np.asarray(uvs)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces must be (F, 3) triangles, got {faces.shape}")
    if uvs.shape != (len(vertices), 2):
        raise ValueError(f"uvs must be ({len(vertices)}, 2), got {uvs.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces must be integers, got {faces.dtype}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"face indices must lie in [0, {len(vertices)}), got [{faces.min()}, {faces.max()}]")
    if not np.isfinite(vertices).all():
        raise ValueError("vertices contain NaN or infinity")
    corners = faces.astype(np.int32, copy=False).ravel()
    count = len(faces)
    return MeshArrays(
        co=np.ascontiguousarray(vertices, dtype=np.float32).ravel(),
        vertex_index=np.ascontiguousarray(corners),
        loop_start=np.arange(0, 3 * count, 3, dtype=np.int32),
        loop_total=np.full(count, 3, dtype=np.int32),
        loop_uv=np.take(np.asarray(uvs, dtype=np.float32), corners, axis=0).ravel(),
        use_smooth=np.ones(count, dtype=bool),
    )


def scalar_pixels(values: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """(H, W) float -> flat float32 RGBA grey (value + offset), rows flipped for Blender."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got {values.shape}")
    height, width = values.shape
    rgba = np.empty((height, width, 4), dtype=np.float32)
    grey = values[::-1].astype(np.float32) + np.float32(offset)
    rgba[..., 0] = grey
    rgba[..., 1] = grey
    rgba[..., 2] = grey
    rgba[..., 3] = 1.0
    return rgba.ravel()


def idprop_value(value: Any) -> Any:
    """Make metadata storable as Blender custom properties (no None, no mixed lists, str keys)."""
    if isinstance(value, Mapping):
        return {str(k): idprop_value(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -2**31 <= value < 2**31 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        items = [idprop_value(v) for v in value]
        if not items:
            return []
        if all(isinstance(v, (int, float)) for v in items):
            return [float(v) for v in items] if any(isinstance(v, float) for v in items) else items
        if all(isinstance(v, str) for v in items) or all(isinstance(v, dict) for v in items):
            return items
        if all(isinstance(v, list) for v in items) and len({len(v) for v in items}) == 1:
            return items  # a matrix: Blender stores nested numeric lists
        return json.dumps(value, default=str)
    return str(value)


def triangle_count(arrays: Mapping) -> int:
    """Triangles of either geometry's mesh (a head's quads count twice)."""
    if "polygon_sizes" in arrays:
        return int((np.asarray(arrays["polygon_sizes"], np.int64) - 2).sum())
    return int(len(arrays["faces"]))


def face_offsets(widths: list, gap: float) -> list:
    """X offsets that put faces of the given widths side by side, ``gap`` apart, centred on 0."""
    total = sum(widths) + gap * (len(widths) - 1)
    offsets, x = [], -total / 2
    for width in widths:
        offsets.append(x + width / 2)
        x += width + gap
    return offsets


def reconstruction_metadata(meta: dict, info: dict, photo: str, options: dict, **extra) -> dict:
    """What every built object records about its request: the photo, the options sent, the server
    (from its ``info`` reply) and the reply's own figures; ``extra`` adds the caller's (batch, timings)."""
    return {"source_photo": photo, "options": dict(options),
            "server_version": info.get("server_version", ""), "protocol_version": info.get("protocol_version", 0),
            "device": info.get("device", ""), "image_size": meta.get("image_size", []),
            "faces_detected": meta.get("faces_detected", 0), "timings_ms": meta.get("timings_ms", {}), **extra}


def object_name(photo: str, face_index: int, face_count: int) -> str:
    """Object name from the photo's file name; a face suffix only when several faces come back."""
    stem = photo.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    stem = stem or "Face"
    return f"{stem}.face{face_index}" if face_count > 1 else stem
