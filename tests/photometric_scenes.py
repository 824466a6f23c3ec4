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
from inference_server.head.atlas import atlas_of
from inference_server.head.camera import Camera, head_rotation
from inference_server.head.model import HeadModel
from inference_server.head.raster import project, vertex_normals, vertex_visibility
from inference_server.head.render import HIDDEN_MATERIALS, vertex_colours
from inference_server.head.shading import linear_to_srgb, rasterize_view, render, srgb_to_linear
from inference_server.head.texels import atlas_xy, interpolate, texel_map

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
    """SH of a white key light from image right and a little above, plus the ambient (found by
    bisection) that makes the lit cheek's mean irradiance ``ratio`` times the shadowed one's."""
    normals = vertex_normals(torch.as_tensor(posed), torch.as_tensor(model.faces.astype(np.int64))).numpy()
    left, right = cheek_vertices(model)
    direction = [1.0, -0.3, -0.35]
    key = [spherical.irradiance(normals[ids], spherical.directional(direction))[:, 0] for ids in (left, right)]
    low, high = 0.0, 1.0
    for _ in range(40):
        ambient = (low + high) / 2
        dark, bright = (np.maximum(k + ambient, 0).mean() for k in key)
        low, high = (ambient, high) if bright / dark > ratio else (low, ambient)
    return spherical.directional(direction, (1.0, 1.0, 1.0), (ambient,) * 3)


def make_scene(model: HeadModel, *, yaw: float = 0.0, size: int = 512, texture_size: int = 512,
               rms_m: float = 0.002, ratio: float | None = 30.0, seed: int = 0, noise: float = 0.005) -> Scene:
    """Render the displaced head under the side light (or a soft frontal light when ``ratio`` is None)."""
    camera = Camera.default_for((size, size))
    rotation = head_rotation(yaw)
    centre = model.vertices[model.face_mask].mean(0)
    plain = ((model.vertices - centre) @ rotation.T + np.array([0.0, 0.0, 0.6])).astype(np.float32)
    drawn = drawn_mask(model)
    faces = torch.as_tensor(model.faces[drawn].astype(np.int64))
    normals = vertex_normals(torch.as_tensor(plain), faces).numpy()   # the refinement's displacement direction
    displacement = smooth_displacement(model, rms_m, seed)
    truth = (plain + displacement[:, None] * normals).astype(np.float32)
    sh = (side_light(model, truth, ratio) if ratio else
          spherical.directional([0.3, -0.4, -1.0], (0.8, 0.78, 0.75), (0.35, 0.36, 0.38)))
    albedo = skin_texture(model, texture_size, seed)
    image, _ = render(torch.as_tensor(truth), faces, camera, torch.as_tensor(sh, dtype=torch.float32),
                      texture=torch.as_tensor(albedo), corner_uv=torch.as_tensor(atlas_of(model).corner_uv[drawn]),
                      background=BACKGROUND)
    image = image.numpy() + np.random.default_rng(seed + 1).normal(0, noise, image.shape)
    return Scene(linear_to_srgb(image), camera, plain, truth, displacement, sh.astype(np.float32), albedo)


def texture_at_vertices(model: HeadModel, texture: np.ndarray, vertex_ids: np.ndarray) -> np.ndarray:
    """(N, C) texture values at the vertices (bilinear, via one face corner of each vertex)."""
    corner_of = np.full(model.vertex_count, -1, np.int64)
    corner_of[model.faces.ravel()[::-1]] = np.arange(model.faces.size)[::-1]
    corner = corner_of[vertex_ids]
    uv = atlas_of(model).corner_uv.reshape(-1, 2)[corner]
    xy = atlas_xy(uv, texture.shape[0]) - 0.5
    return np.stack([ndimage.map_coordinates(texture[..., c].astype(np.float64), [xy[:, 1], xy[:, 0]], order=1)
                     for c in range(texture.shape[2])], 1)


def luminance(linear_rgb: np.ndarray) -> np.ndarray:
    return linear_rgb @ np.array([0.2126, 0.7152, 0.0722])


def visible_face_vertices(model: HeadModel, posed: np.ndarray, camera: Camera, min_facing: float = 0.3) -> np.ndarray:
    """(V,) bool: face-area vertices the camera sees, facing it by more than ``min_facing`` (cosine)."""
    vertices = torch.as_tensor(posed)
    faces = torch.as_tensor(model.faces[drawn_mask(model)].astype(np.int64))
    raster = rasterize_view(vertices, faces, camera)
    visible = vertex_visibility(project(vertices, camera.focal, camera.principal), raster, 0.002).numpy()
    normals = vertex_normals(vertices, faces)
    facing = (normals * torch.nn.functional.normalize(-vertices, dim=1)).sum(1).numpy()
    return model.face_mask & visible & (facing > min_facing)


def mean_distance_mm(a: np.ndarray, b: np.ndarray, vertex_ids: np.ndarray) -> float:
    """Mean distance between corresponding vertices of two posed heads, millimetres."""
    return float(1000 * np.linalg.norm(a[vertex_ids] - b[vertex_ids], axis=1).mean())


def displaced(model: HeadModel, posed: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``posed`` moved by ``displacement`` (V,) metres along its vertex normals (the refinement's convention)."""
    faces = torch.as_tensor(model.faces[drawn_mask(model)].astype(np.int64))
    normals = vertex_normals(torch.as_tensor(posed), faces).numpy()
    return posed + displacement[:, None] * normals


def cheek_ratio(model: HeadModel, linear_texture: np.ndarray) -> float:
    """Brighter over darker mean cheek luminance of a linear albedo texture."""
    left, right = (luminance(texture_at_vertices(model, linear_texture, ids)).mean() for ids in cheek_vertices(model))
    return float(max(left, right) / min(left, right))


def photo_cheek_ratio(model: HeadModel, scene: Scene) -> float:
    """The same for the photo (linear luminance at the cheek vertices' pixels)."""
    xy = project(torch.as_tensor(scene.truth), scene.camera.focal, scene.camera.principal)[:, :2].numpy()
    photo = srgb_to_linear(scene.photo)
    values = []
    for ids in cheek_vertices(model):
        col, row = np.floor(xy[ids]).astype(int).T
        values.append(luminance(photo[row, col]).mean())
    return float(max(values) / min(values))
