"""The head as it travels: the model's polygons (quads where upstream has quads), atlas UVs per corner,
one material per part, and Blender's axes.

Only the geometry from the face up to and including the eyeballs is kept (``KEPT_VERTICES``): the
transparent helper shells (lacrimal fluid, eye blend, eye occlusion) and the eyelashes come after
them in the model's vertex order, so vertex *i* is still the same anatomical point on every head.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .atlas import atlas_of
from .model import HeadModel

KEPT_VERTICES = 24591  # model vertices 0 .. 24590: face, head and neck, mouth, eye sockets, gums, teeth, eyeballs
MATERIALS = ("skin", "back_head", "mouth", "eyes_sclera", "iris", "teeth", "gums_tongue")
UPSTREAM_MATERIAL = {"M_Face": "skin", "M_BackHead": "back_head", "M_GumsTongue": "gums_tongue",
                     "M_Teeth": "teeth", "M_ScleraLeft": "eyes_sclera", "M_ScleraRight": "eyes_sclera",
                     "M_IrisLeft": "iris", "M_IrisRight": "iris"}


@dataclass(frozen=True)
class Topology:
    triangles: np.ndarray         # (T, 3) int32 kept triangles (for rendering and visibility)
    polygon_sizes: np.ndarray     # (P,) uint8, 3 or 4
    polygon_vertices: np.ndarray  # (sum sizes,) int32
    corner_uvs: np.ndarray        # (sum sizes, 2) float32 atlas UVs
    polygon_material: np.ndarray  # (P,) uint8 index into MATERIALS


def to_blender(points: np.ndarray) -> np.ndarray:
    """Model frame (+Y up, face toward +Z) -> Blender's (Z up, face toward -Y)."""
    points = np.asarray(points, np.float32)
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


@lru_cache(maxsize=2)
def topology(model: HeadModel) -> Topology:
    """Polygons rebuilt from the triangle pairs of each upstream quad: (a,b,c) + (a,c,d) -> (a,b,c,d)."""
    keep = np.flatnonzero((model.faces < KEPT_VERTICES).all(1))
    poly = model.face_poly[keep]
    first = np.ones(len(keep), bool)
    first[1:] = poly[1:] != poly[:-1]
    starts = keep[first]
    counts = np.diff(np.append(np.flatnonzero(first), len(keep)))
    if counts.max() > 2:
        raise ValueError("the head model has polygons of more than four corners")
    quad = counts == 2
    second = model.faces[starts[quad] + 1]
    if not (np.array_equal(second[:, 0], model.faces[starts[quad], 0])
            and np.array_equal(second[:, 1], model.faces[starts[quad], 2])):
        raise ValueError("the head model's quads are not split along their 0-2 diagonal")
    sizes = np.where(quad, 4, 3).astype(np.uint8)
    atlas = atlas_of(model)
    atlas_corners = atlas.face_uv
    vertex_rows = [model.faces[starts], np.where(quad, model.faces[np.minimum(starts + 1, len(model.faces) - 1), 2], -1)]
    uv_rows = [atlas_corners[starts], np.where(quad, atlas_corners[np.minimum(starts + 1, len(model.faces) - 1), 2], -1)]
    vertices = np.column_stack(vertex_rows)
    uv_index = np.column_stack(uv_rows)
    used = np.column_stack([np.ones((len(starts), 3), bool), quad])
    names = [UPSTREAM_MATERIAL.get(model.material_names[m], "skin") for m in model.face_material[starts]]
    material = np.array([MATERIALS.index(name) for name in names], np.uint8)
    mouth = model.part_names.index("mouth_socket")
    material[(model.vertex_part[model.faces[starts]] == mouth).all(1)] = MATERIALS.index("mouth")
    return Topology(triangles=model.faces[keep].astype(np.int32), polygon_sizes=sizes,
                    polygon_vertices=vertices[used].astype(np.int32),
                    corner_uvs=atlas.uv[uv_index[used]].astype(np.float32), polygon_material=material)
