"""A differentiable SH-shaded renderer on top of the z-buffer rasteriser (``raster``).

Visibility (which triangle owns each pixel) is fixed per call, as in ``raster``; everything after it
is torch arithmetic, so a loss on the rendered pixels has gradients to the vertex positions (through
the normals and the barycentrics), to the SH lighting and to per-vertex or texture albedo.

The photometric work runs on a ``View``: the photo cropped around the head and resampled so the
head spans a fixed number of pixels, with the matching camera. Its cost does not grow with the
photo's size. Images are linear RGB in 0..1 (``srgb_to_linear`` of the photo); SH lighting is in
the camera frame (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import sh as spherical
from .camera import Camera
from .raster import Raster, pixel_surface, project, rasterize, vertex_normals
from .render import FRONT_FACING


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear 0..1 (the IEC 61966-2-1 curve)."""
    c = image.astype(np.float32) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """float linear (clipped to 0..1) -> uint8 sRGB."""
    c = np.clip(linear, 0.0, 1.0)
    c = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.clip(c * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class View:
    """The photo around the head at working resolution, and the photo crop it was made from."""
    camera: Camera
    image: np.ndarray               # (h, w, 3) float32 linear RGB
    box: tuple[int, int, int, int]  # the crop in photo pixels: x0, y0, x1, y1


def make_view(photo_rgb: np.ndarray, camera: Camera, points_px: np.ndarray, side: int,
              margin: float = 0.08) -> View:
    """Crop ``photo_rgb`` around ``points_px`` (N, 2 photo pixels) with a relative ``margin`` and
    shrink it so its longer side is at most ``side`` pixels (never enlarged)."""
    height, width = photo_rgb.shape[:2]
    lo, hi = points_px.min(0), points_px.max(0)
    pad = margin * float((hi - lo).max())
    x0, y0 = (int(max(0, np.floor(v - pad))) for v in lo)
    x1, y1 = int(min(width, np.ceil(hi[0] + pad))), int(min(height, np.ceil(hi[1] + pad)))
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise ValueError("the head does not overlap the photo")
    scale = min(1.0, side / max(x1 - x0, y1 - y0))
    size = (max(4, round((y1 - y0) * scale)), max(4, round((x1 - x0) * scale)))
    crop = srgb_to_linear(photo_rgb[y0:y1, x0:x1])
    image = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_AREA) if scale < 1 else crop
    sx, sy = size[1] / (x1 - x0), size[0] / (y1 - y0)
    principal = ((camera.principal[0] - x0) * sx, (camera.principal[1] - y0) * sy)
    view_camera = Camera(camera.focal * (sx + sy) / 2, principal, size)
    return View(view_camera, image, (x0, y0, x1, y1))


@dataclass
class Pixels:
    """The pixels a loss looks at, with their surface point fixed by one rasterisation."""
    rows: torch.Tensor       # (P,) int64
    cols: torch.Tensor       # (P,) int64
    face: torch.Tensor       # (P,) int64 index into the rasterised faces
    corners: torch.Tensor    # (P, 3) int64 vertex ids
    bary: torch.Tensor       # (P, 3) perspective-correct barycentrics (no gradient)


def rasterize_view(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera) -> Raster:
    """Front-facing z-buffer of camera-frame ``vertices`` (no gradients kept)."""
    with torch.no_grad():
        return rasterize(project(vertices, camera.focal, camera.principal), faces, camera.size, FRONT_FACING)


def select_pixels(raster: Raster, faces: torch.Tensor, keep: torch.Tensor) -> Pixels:
    """The covered pixels whose triangle passes ``keep`` (bool per rasterised face)."""
    covered = raster.mask & keep[raster.triangle.clamp(min=0)]
    rows, cols = torch.nonzero(covered, as_tuple=True)
    face = raster.triangle[rows, cols]
    return Pixels(rows, cols, face, faces[face].long(), raster.bary[rows, cols].detach())


def pixel_barycentrics(vertices: torch.Tensor, faces: torch.Tensor, pixels: Pixels, camera: Camera,
                       shape: tuple[int, int]) -> torch.Tensor:
    """Barycentrics (P, 3) recomputed from (possibly moved) ``vertices`` for the fixed visibility;
    differentiable in ``vertices``."""
    triangle = torch.full(shape, -1, dtype=torch.int64, device=vertices.device)
    triangle[pixels.rows, pixels.cols] = pixels.face
    bary, _ = pixel_surface(project(vertices, camera.focal, camera.principal), faces.long(), triangle)
    return bary[pixels.rows, pixels.cols]


def at_pixels(values: torch.Tensor, pixels: Pixels, bary: torch.Tensor | None = None) -> torch.Tensor:
    """Per-vertex ``values`` (V, C) interpolated at the pixels (P, C)."""
    weights = pixels.bary if bary is None else bary
    return (weights[..., None] * values[pixels.corners]).sum(1)


def pixel_normals(vertices: torch.Tensor, faces: torch.Tensor, pixels: Pixels,
                  bary: torch.Tensor | None = None) -> torch.Tensor:
    """Unit shading normals (P, 3): vertex normals of ``faces`` interpolated and renormalised."""
    return torch.nn.functional.normalize(at_pixels(vertex_normals(vertices, faces), pixels, bary), dim=1, eps=1e-9)


def shade(normals: torch.Tensor, albedo: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Lambertian SH shading: ``albedo * E(normal)`` per pixel (P, 3)."""
    return albedo * spherical.irradiance(normals, sh)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear texture (S, S, C) samples at atlas ``uv`` (P, 2) (v up, texel centres at +0.5, as
    ``texels``); differentiable in ``texture``."""
    grid = torch.stack([2 * uv[:, 0] - 1, 1 - 2 * uv[:, 1]], 1)[None, None]           # (1, 1, P, 2)
    image = texture.permute(2, 0, 1)[None]
    out = torch.nn.functional.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0, :, 0].T


def render(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera, sh: torch.Tensor,
           albedo_vertex: torch.Tensor | None = None, texture: torch.Tensor | None = None,
           corner_uv: torch.Tensor | None = None, background=(0.0, 0.0, 0.0)) -> tuple[torch.Tensor, Raster]:
    """Linear RGB image (H, W, 3) of the head under ``sh``, albedo from per-vertex colours or from
    ``texture`` via per-face corner UVs ``corner_uv`` (F, 3, 2), and its raster."""
    raster = rasterize_view(vertices, faces, camera)
    pixels = select_pixels(raster, faces, torch.ones(len(faces), dtype=torch.bool, device=vertices.device))
    bary = pixel_barycentrics(vertices, faces, pixels, camera, camera.size)
    normals = pixel_normals(vertices, faces, pixels, bary)
    if texture is not None:
        uv = (bary[..., None] * corner_uv[pixels.face]).sum(1)
        albedo = sample_texture(texture, uv)
    else:
        albedo = at_pixels(albedo_vertex, pixels, bary)
    image = torch.tensor(background, dtype=vertices.dtype, device=vertices.device).expand(*camera.size, 3).clone()
    image = image.index_put((pixels.rows, pixels.cols), shade(normals, albedo, sh))
    return image, raster
