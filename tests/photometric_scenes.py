"""Photos with known answers for the photometric refinement: the model head with a known skin
texture, a known SH lighting and a known smooth displacement (a shape the model cannot carry),
rendered by the product's own SH renderer (``inference_server.head.shading``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from inference_server.head import sh as spherical
from inference_server.head.camera import Camera, head_rotation
from inference_server.head.model import HeadModel
from inference_server.head.raster import vertex_normals
from inference_server.head.render import HIDDEN_MATERIALS, vertex_colours
from inference_server.head.shading import linear_to_srgb, render, srgb_to_linear
from inference_server.head.texels import interpolate, texel_map

CHEEK_RADIUS_M = 0.012
BACKGROUND = (0.25, 0.27, 0.3)


@dataclass
class Scene:
    photo: np.ndarray            # (H, W, 3) uint8 sRGB
    camera: Camera
    plain: np.ndarray            # (V, 3) posed head without the displacement (what a fit would give)
    truth: np.ndarray            # (V, 3) posed head that was rendered
    displacement: np.ndarray     # (V,) metres along the plain head's normals
    sh: np.ndarray               # (9, 3) camera-frame lighting
    albedo: np.ndarray           # (S, S, 3) float32 linear albedo texture


def drawn_mask(model: HeadModel) -> np.ndarray:
    return ~np.isin(np.asarray(model.material_names)[model.face_material], HIDDEN_MATERIALS)


def skin_texture(model: HeadModel, size: int, seed: int = 0) -> np.ndarray:
    """Linear albedo (S, S, 3): the renders' part colours (skin, lips, brows, eyes) with blotchy
    low-frequency variation (redness, ~10 %) and fine grain (~3 %)."""
    rng = np.random.default_rng(seed)
    texels = texel_map(model, size)
    base = np.zeros((size * size, 3), np.float32)
    base[texels.texel] = interpolate(texels, srgb_to_linear((vertex_colours(model) * 255).round().astype(np.uint8)))
    base = base[texels.nearest].reshape(size, size, 3)
    blotch = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 40)
    blotch *= 0.10 / blotch.std()
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)
    grain *= 0.03 / grain.std()
    tint = np.stack([1 + blotch, 1 - 0.5 * blotch, 1 - 0.5 * blotch], -1) * (1 + grain)[..., None]
    return np.clip(base * tint, 0, 1).astype(np.float32)


def smooth_displacement(model: HeadModel, rms_m: float = 0.002, seed: int = 0) -> np.ndarray:
    """(V,) metres: a sum of random Gaussian bumps and dents (1-2.5 cm wide) over the face,
    fading to zero over 1.5 cm at the face area's border."""
    rng = np.random.default_rng(seed)
    area = model.face_mask
    points = model.vertices.astype(np.float64)
    centres = points[rng.choice(np.nonzero(area)[0], 24, replace=False)]
    widths = rng.uniform(0.01, 0.025, len(centres))
    signs = rng.choice([-1.0, 1.0], len(centres))
    distance = np.linalg.norm(points[:, None, :] - centres[None], axis=2)
    field = (signs * np.exp(-0.5 * (distance / widths) ** 2)).sum(1)
    border, _ = cKDTree(points[~area]).query(points)
    field *= np.clip(border / 0.015, 0, 1) * area
    return (field * rms_m / np.sqrt((field[area] ** 2).mean())).astype(np.float32)


def cheek_vertices(model: HeadModel) -> tuple[np.ndarray, np.ndarray]:
    """Vertex ids of the two cheeks (image-left then image-right of a frontal face): discs around the
    point 45 % of the way from the nose wing to the jaw line."""
    marks = model.vertices[model.landmarks68]
    discs = []
    for wing, jaw in ((31, 3), (35, 13)):
        centre = marks[wing] + 0.45 * (marks[jaw] - marks[wing])
        near = np.linalg.norm(model.vertices[:, :2] - centre[:2], axis=1) < CHEEK_RADIUS_M
        discs.append(np.nonzero(near & model.face_mask)[0])
    return discs[0], discs[1]


def side_light(model: HeadModel, posed: np.ndarray, ratio: float = 30.0) -> np.ndarray:
    """SH of a white key light from image right and a little above, plus the ambient that makes the
    lit cheek's irradiance ``ratio`` times the shadowed one's."""
    normals = vertex_normals(torch.as_tensor(posed), torch.as_tensor(model.faces.astype(np.int64))).numpy()
    left, right = cheek_vertices(model)
    key = spherical.directional([1.0, -0.3, -0.35], (1.0, 1.0, 1.0))
    dark, bright = (spherical.irradiance(normals[ids], key)[:, 0].mean() for ids in (left, right))
    ambient = (bright - ratio * dark) / (ratio - 1)          # (bright + a) / (dark + a) = ratio
    return spherical.directional([1.0, -0.3, -0.35], (1.0, 1.0, 1.0), (ambient,) * 3)


def make_scene(model: HeadModel, *, yaw: float = 0.0, size: int = 512, texture_size: int = 512,
               rms_m: float = 0.002, ratio: float | None = 30.0, seed: int = 0, noise: float = 0.005) -> Scene:
    """Render the displaced head under the side light (or a soft frontal light when ``ratio`` is None)."""
    camera = Camera.default_for((size, size))
    rotation = head_rotation(yaw)
    centre = model.vertices[model.face_mask].mean(0)
    plain = ((model.vertices - centre) @ rotation.T + np.array([0.0, 0.0, 0.6])).astype(np.float32)
    faces = torch.as_tensor(model.faces.astype(np.int64))
    normals = vertex_normals(torch.as_tensor(plain), faces).numpy()
    displacement = smooth_displacement(model, rms_m, seed)
    truth = (plain + displacement[:, None] * normals).astype(np.float32)
    sh = (side_light(model, plain, ratio) if ratio else
          spherical.directional([0.3, -0.4, -1.0], (0.8, 0.78, 0.75), (0.35, 0.36, 0.38)))
    albedo = skin_texture(model, texture_size, seed)
    drawn = drawn_mask(model)
    image, _ = render(torch.as_tensor(truth), faces[drawn], camera, torch.as_tensor(sh, dtype=torch.float32),
                      texture=torch.as_tensor(albedo), corner_uv=torch.as_tensor(model.atlas.corner_uv[drawn]),
                      background=BACKGROUND)
    image = image.numpy() + np.random.default_rng(seed + 1).normal(0, noise, image.shape)
    return Scene(linear_to_srgb(image), camera, plain, truth, displacement, sh.astype(np.float32), albedo)
