"""Head-mode replies built from the ICT model itself (test support: no server, no fit).

``head_reply_from_model`` makes the arrays and meta of the head reply contract
(``protocol.HEAD_ARRAYS``) straight from the model with the server's own topology and atlas, so
the Blender side is tested apart from the fit. The texture is generated (a colour per atlas region
with a grid), not a photo.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from addon.wire.client import FaceData
from inference_server.head.atlas import REGIONS
from inference_server.head.topology import KEPT_VERTICES, MATERIALS, to_blender, topology

from .ict_fixtures import ICT_NPZ


def shared_model_path() -> Path:
    """The converted model (benchmarks.ict_eval knows where the shared data is)."""
    return ICT_NPZ


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = shared_model_path()
    if not path.exists():
        pytest.skip(f"shared head model missing: {path}")
    return path


REGION_COLOURS = {"face": (224, 172, 140), "back_head": (150, 110, 90), "teeth": (235, 225, 200),
                  "gums_tongue": (120, 40, 50), "sclera_left": (240, 240, 235), "sclera_right": (240, 240, 235),
                  "iris_left": (70, 110, 160), "iris_right": (70, 110, 160)}


def generated_texture(size: int) -> np.ndarray:
    """A colour per atlas region with a dark grid every 1/16 of the atlas (shows seams and stretching)."""
    texture = np.zeros((size, size, 3), np.float32)
    for region in REGIONS:
        u0, v0 = region.origin
        rows = slice(int(round((1 - v0 - region.size) * size)), int(round((1 - v0) * size)))
        cols = slice(int(round(u0 * size)), int(round((u0 + region.size) * size)))
        texture[rows, cols] = REGION_COLOURS.get(region.name, (0, 0, 0))
    lines = (np.arange(size) * 16 // size) != ((np.arange(size) + 1) * 16 // size)
    texture[lines] *= 0.6
    texture[:, lines] *= 0.6
    return texture.astype(np.uint8)


def pose_matrix(yaw_deg: float = 0.0, translation=(0.0, 0.0, 0.0)) -> list:
    """A rigid 4x4 (rows) turning the head about Z (Blender's up) and moving it."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    return [[c, -s, 0.0, translation[0]], [s, c, 0.0, translation[1]], [0.0, 0.0, 1.0, translation[2]],
            [0.0, 0.0, 0.0, 1.0]]


def head_reply_from_model(npz_path, id_coeffs=None, exp_weights=None, *, pose=None, texture_size=256,
                          index=0) -> FaceData:
    """A head reply (arrays + meta of the contract) for the given identity and expression weights, with
    the server's own topology and atlas (``inference_server.head.topology``) but no fit and no photo."""
    from inference_server.head.model import HeadModel

    model = HeadModel.load(npz_path)
    expressions = len(model.exp_names)
    weights = np.zeros(expressions, np.float32) if exp_weights is None else np.asarray(exp_weights, np.float32)
    neutral = model.shape(id_coeffs)[:KEPT_VERTICES]
    shape = topology(model)
    landmark_vertices = np.linspace(0, 6705, 478).astype(int)  # placeholder spots on the face area
    arrays = {
        "vertices": to_blender(neutral),
        "polygon_sizes": shape.polygon_sizes,
        "polygon_vertices": shape.polygon_vertices,
        "corner_uvs": shape.corner_uvs,
        "polygon_material": shape.polygon_material,
        "expression_deltas": to_blender(model.exp_deltas[:, :KEPT_VERTICES].astype(np.float32)),
        "expression_weights": weights,
        "texture": generated_texture(texture_size),
        "detail": np.zeros((texture_size, texture_size), np.float16),  # float16 as on the wire
        "vertex_irradiance": np.linspace(0.2, 1.2, KEPT_VERTICES * 3).reshape(-1, 3).astype(np.float16),
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
