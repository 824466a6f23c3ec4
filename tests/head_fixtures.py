"""Head-mode replies built from the ICT model itself (test support: no server, no fit).

``head_reply_from_model`` makes the arrays and meta of the head reply contract (docs:
/work/notes/head_reply.md, the table the coordinator puts into ``wire/protocol.py``) straight
from the model, so the Blender side can be tested before and apart from the fit.

The atlas here is a STAND-IN until the server's atlas lands: each upstream UV tile (u in [k, k+1])
goes into its own cell of a 4 x 2 grid, left and right eyes sharing a cell as upstream they share
a texture. The texture is generated (a colour per cell with a grid), not a photo.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from addon.wire.client import FaceData

KEPT_VERTICES = 24591  # face ... eyeballs; helper shells and eyelashes come after
MATERIALS = ("skin", "back_head", "mouth", "eyes_sclera", "iris", "teeth", "gums_tongue")
# upstream material -> (reply material, atlas cell); the mouth socket (upstream M_BackHead) is split off by part
UPSTREAM = {"M_Face": ("skin", 0), "M_BackHead": ("back_head", 1), "M_GumsTongue": ("gums_tongue", 2),
            "M_Teeth": ("teeth", 3), "M_ScleraLeft": ("eyes_sclera", 4), "M_ScleraRight": ("eyes_sclera", 4),
            "M_IrisLeft": ("iris", 5), "M_IrisRight": ("iris", 5)}
CELL_COLOURS = np.array([[224, 172, 140], [150, 110, 90], [120, 40, 50], [235, 225, 200],
                         [240, 240, 235], [70, 110, 160], [0, 0, 0], [0, 0, 0]], np.uint8)
GRID = (4, 2)
PADDING = 0.02  # fraction of a cell left empty on each side


def shared_model_path() -> Path:
    """The converted model: ../shared next to the checkout, else /work/shared."""
    relative = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ict_facekit" / "ict_face_model.npz"
    return relative if relative.exists() else Path("/work/shared/data/ict_facekit/ict_face_model.npz")


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = shared_model_path()
    if not path.exists():
        pytest.skip(f"shared head model missing: {path}")
    return path


def to_blender(points: np.ndarray) -> np.ndarray:
    """Model frame (+Y up, face toward +Z) -> Blender's (Z up, face toward -Y)."""
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1).astype(np.float32)


def rebuild_polygons(model, keep_triangles: np.ndarray):
    """Quads from consecutive triangle pairs of one upstream polygon, (a,b,c)+(a,c,d) -> (a,b,c,d).

    Returns (first triangle of each polygon, polygon sizes, corner vertex indices, corner uv indices).
    """
    triangles = np.flatnonzero(keep_triangles)
    poly = model.face_poly[triangles]
    first = np.ones(len(triangles), bool)
    first[1:] = poly[1:] != poly[:-1]
    starts = triangles[first]
    sizes = np.where(np.diff(np.append(np.flatnonzero(first), len(triangles))) == 2, 4, 3).astype(np.uint8)
    corners, corner_uv = [], []
    for start, size in zip(starts, sizes):
        tri, uv = model.faces[start], model.face_uv[start]
        if size == 4:
            assert model.faces[start + 1][0] == tri[0] and model.faces[start + 1][1] == tri[2]
            tri = np.append(tri, model.faces[start + 1][2])
            uv = np.append(uv, model.face_uv[start + 1][2])
        corners.append(tri)
        corner_uv.append(uv)
    return starts, sizes, np.concatenate(corners).astype(np.int32), np.concatenate(corner_uv)


def atlas_uvs(model, starts, sizes, corner_uv_index):
    """Upstream multi-tile UVs -> one [0, 1] atlas (stand-in packing: one grid cell per upstream tile)."""
    upstream = [UPSTREAM[model.material_names[m]] for m in model.face_material[starts]]
    cells = np.repeat([cell for _, cell in upstream], sizes)
    uv = model.uv[corner_uv_index].astype(np.float64)
    polygon = np.repeat(np.arange(len(sizes)), sizes)
    tile = np.floor(np.bincount(polygon, uv[:, 0]) / sizes)[polygon]  # each upstream polygon lies in one tile
    local = np.stack([uv[:, 0] - tile, uv[:, 1]], 1).clip(0.0, 1.0) * (1 - 2 * PADDING) + PADDING
    column, row = cells % GRID[0], cells // GRID[0]
    return np.stack([(column + local[:, 0]) / GRID[0], (row + local[:, 1]) / GRID[1]], 1).astype(np.float32)


def generated_texture(size: int) -> np.ndarray:
    """A colour per atlas cell with a dark grid every 1/16 of a cell (shows seams and stretching),
    and an iris with its pupil in the middle of the eye cell, where the eye shell's UVs put the cornea."""
    v, u = np.mgrid[0:size, 0:size] + 0.5
    cell_u, cell_v = u / size * GRID[0], (size - v) / size * GRID[1]  # row 0 of the image is the atlas' top
    cell = cell_v.astype(int) * GRID[0] + cell_u.astype(int)
    texture = CELL_COLOURS[cell].astype(np.float32)
    lines = (cell_u * 16 % 1 < 0.08) | (cell_v * 16 % 1 < 0.08)
    texture[lines] *= 0.6
    eye = UPSTREAM["M_ScleraLeft"][1]
    radius = np.hypot(cell_u % 1 - 0.5, cell_v % 1 - 0.5)
    texture[(cell == eye) & (radius < 0.13)] = (60, 100, 150)
    texture[(cell == eye) & (radius < 0.05)] = (10, 10, 10)
    return texture.astype(np.uint8)


def pose_matrix(yaw_deg: float = 0.0, translation=(0.0, 0.0, 0.0)) -> list:
    """A rigid 4x4 (rows) turning the head about Z (Blender's up) and moving it."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    return [[c, -s, 0.0, translation[0]], [s, c, 0.0, translation[1]], [0.0, 0.0, 1.0, translation[2]],
            [0.0, 0.0, 0.0, 1.0]]


def head_reply_from_model(npz_path, id_coeffs=None, exp_weights=None, *, pose=None, texture_size=256,
                          index=0) -> FaceData:
    """A head reply (arrays + meta of the contract) for the given identity and expression weights."""
    from inference_server.head.model import HeadModel

    model = HeadModel.load(npz_path)
    expressions = len(model.exp_names)
    weights = np.zeros(expressions, np.float32) if exp_weights is None else np.asarray(exp_weights, np.float32)
    neutral = model.shape(id_coeffs)[:KEPT_VERTICES]
    keep = (model.faces < KEPT_VERTICES).all(1)
    starts, sizes, corners, corner_uv = rebuild_polygons(model, keep)
    part = model.vertex_part[model.faces[starts]].max(1)
    material = np.array([MATERIALS.index(UPSTREAM[model.material_names[m]][0]) for m in model.face_material[starts]])
    material[part == model.part_names.index("mouth_socket")] = MATERIALS.index("mouth")
    landmark_vertices = np.linspace(0, 6705, 478).astype(int)  # placeholder spots on the face area
    arrays = {
        "vertices": to_blender(neutral),
        "polygon_sizes": sizes,
        "polygon_vertices": corners,
        "corner_uvs": atlas_uvs(model, starts, sizes, corner_uv),
        "polygon_material": material.astype(np.uint8),
        "expression_deltas": to_blender(model.exp_deltas[:, :KEPT_VERTICES].astype(np.float32)),
        "expression_weights": weights,
        "texture": generated_texture(texture_size),
        "detail": np.zeros((texture_size, texture_size), np.float32),
        "depth": np.zeros((64, 64), np.float32),
        "mask": np.zeros((64, 64), bool),
        "landmarks": to_blender(neutral[landmark_vertices]),
        "landmarks_image": np.zeros((478, 2), np.float32),
    }
    meta = {"geometry": "head", "materials": list(MATERIALS), "expressions": list(model.exp_names),
            "pose": {"matrix": pose or pose_matrix()},
            "camera": {"focal_px": 1000.0, "principal_px": [256.0, 256.0], "image_size": [512, 512]},
            "identity": [float(c) for c in (np.zeros(100) if id_coeffs is None else id_coeffs)],
            "fit": {"landmark_error_px": 0.0, "landmark_error_eye_pct": 0.0}}
    return FaceData(index=index, meta=meta, arrays=arrays)
