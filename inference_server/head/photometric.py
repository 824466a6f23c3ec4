"""Photometric refinement of a fitted head: SH lighting, de-lit albedo, and shape detail the model
cannot carry — analysis by synthesis on the photo with the SH renderer (``shading``).

API::

    refine_head(model, photo_rgb, posed_vertices, camera, level="full", *, faces=None, device="cpu",
                report=None, texture_size=1024) -> PhotometricResult

- ``posed_vertices``: (V, 3) the fitted head in the camera frame (metres; x right, y down, z forward),
  ``camera``: ``camera.Camera`` of the photo, ``photo_rgb``: (H, W, 3) uint8 sRGB.
- ``level``: ``"light"`` (lighting + albedo) or ``"full"`` (also the shape); ``"off"`` is the
  caller's: it skips this module.
- ``report(phase_text, fraction)``: progress, fraction of the whole refinement in 0..1; it may
  raise to cancel (the exception propagates).

Result (``PhotometricResult``):

- ``sh`` (9, 3) float32: lighting in the camera frame (``sh.rotate`` moves it to another frame),
  scaled so the well-lit skin has irradiance 1 (``lighting``);
- ``albedo_texture`` (S, S, 3) uint8 sRGB in the model's atlas: the photo divided by the shading
  where seen and well lit, the mirrored side where that was, else a smooth fill (``texture.unwrap``);
- ``vertex_irradiance`` (V, 3) float32: the lighting per vertex (linear; albedo x irradiance is the
  photo's look: ``lit_texture`` paints it into the atlas);
- ``displacement`` (V,) float32 metres along the posed head's vertex normals (area-weighted,
  outward); zero outside the face area and for ``light``;
- ``residual``: RMS colour difference (linear 0..1) between render and photo on the skin pixels,
  ``{"before": ..., "after": ...}``; ``timings``: seconds per phase.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np
import torch
from scipy import ndimage

from . import sh as spherical
from .camera import Camera
from .lighting import Lighting, LightingConfig, fit_lighting, skin_chroma_weight
from .model import HeadModel
from .raster import project, vertex_normals, vertex_visibility
from .relief import LUMINANCE, Observation, ReliefConfig, face_patch, refine_relief
from .render import drawn_faces
from .shading import (View, linear_to_srgb, make_view, pixel_normals, rasterize_view, select_pixels, shade,
                      srgb_to_linear)
from .skin import core_mask, skin_mask
from .texels import interpolate, texel_map
from .sampling import sample_bilinear
from .symmetry import mirror_of
from .texture import unwrap

if TYPE_CHECKING:
    from .photo_regions import PhotoWeight

Report = Callable[[str, float], None]


@dataclass(frozen=True)
class RefineConfig:
    work_side: int                        # longer side of the working view of the head, pixels
    relief: ReliefConfig | None           # None: no shape refinement
    texture_size: int = 1024
    lighting: LightingConfig = LightingConfig()
    min_facing: float = 0.3               # pixels seen at more than ~70 degrees off the view never count
    full_facing: float = 0.6              # ... and count fully from ~50 degrees
    lit_ramp: tuple[float, float] = (0.08, 0.25)  # irradiance below which the albedo comes from elsewhere
    mirror_ratio: tuple[float, float] = (1.4, 2.0)  # de-lit colour this far from its better-lit mirror: less trusted
    visibility_eps_m: float = 0.004


LEVEL_CONFIGS = {"light": RefineConfig(work_side=192, relief=None),
                 "full": RefineConfig(work_side=320, relief=ReliefConfig())}


@dataclass
class PhotometricResult:
    sh: np.ndarray
    albedo_texture: np.ndarray
    vertex_irradiance: np.ndarray
    displacement: np.ndarray
    residual: dict
    timings: dict = field(default_factory=dict)
    skin_albedo: np.ndarray | None = None   # (3,) linear skin albedo behind the lighting estimate


def level_config(level: str, texture_size: int = 1024) -> RefineConfig:
    if level not in LEVEL_CONFIGS:
        raise ValueError(f"refine level must be one of {', '.join(LEVEL_CONFIGS)} ('off' skips refinement), "
                         f"not {level!r}")
    return replace(LEVEL_CONFIGS[level], texture_size=texture_size)


def refine_head(model: HeadModel, photo_rgb: np.ndarray, posed_vertices: np.ndarray, camera: Camera,
                level: str = "full", *, faces: np.ndarray | None = None, device: str | torch.device = "cpu",
                report: Report | None = None, texture_size: int = 1024,
                config: RefineConfig | None = None, skin: "PhotoWeight | None" = None) -> PhotometricResult:
    """``skin`` (``photo_regions``): where the photo shows the head's own skin; the albedo takes the
    photo's colour only there."""
    config = config or level_config(level, texture_size)
    _check_inputs(model, photo_rgb, posed_vertices)
    report = report or (lambda text, fraction: None)
    clock = _Clock()
    device = torch.device(device)
    faces = drawn_faces(model) if faces is None else np.asarray(faces)
    scene = _Scene.build(model, photo_rgb, posed_vertices, camera, faces, device, config)
    clock.lap("view")
    report("estimating the lighting", 0.05)
    observation = scene.observe(scene.vertices)
    light = fit_lighting(pixel_normals(scene.vertices, scene.faces, observation.pixels), observation.colours,
                         observation.weight, observation.core, config.lighting)
    before = scene.residual(scene.vertices, light.sh, light.albedo)
    clock.lap("lighting")
    displacement = torch.zeros(model.vertex_count, dtype=scene.vertices.dtype, device=device)
    if config.relief is not None:
        displacement, light = _refine_shape(scene, report, config.relief)
        clock.lap("shape")
    vertices = scene.vertices + displacement[:, None] * scene.normals
    sh = light.sh
    after = scene.residual(vertices, sh, light.albedo) if config.relief is not None else before
    report("de-lighting the texture", 0.8 if config.relief else 0.3)
    albedo, irradiance = _textures(scene, vertices, sh, skin)
    clock.lap("albedo")
    report("refinement done", 1.0)
    return PhotometricResult(sh.cpu().numpy().astype(np.float32), albedo, irradiance,
                             displacement.cpu().numpy().astype(np.float32), {"before": before, "after": after},
                             clock.laps, light.albedo.cpu().numpy())


def lit_texture(model: HeadModel, result: PhotometricResult) -> np.ndarray:
    """(S, S, 3) uint8 sRGB: the albedo lit by the fitted light - the photo's own colours where it
    saw the head, the same lighting carried over the unseen parts."""
    irradiance = _texture_of(model, result.vertex_irradiance, result.albedo_texture.shape[0])
    return linear_to_srgb(srgb_to_linear(result.albedo_texture) * irradiance)


def _check_inputs(model: HeadModel, photo_rgb: np.ndarray, posed_vertices: np.ndarray) -> None:
    if not (isinstance(photo_rgb, np.ndarray) and photo_rgb.dtype == np.uint8 and photo_rgb.ndim == 3
            and photo_rgb.shape[2] == 3):
        raise ValueError("photo must be an (H, W, 3) uint8 RGB image")
    vertices = np.asarray(posed_vertices)
    if vertices.shape != (model.vertex_count, 3) or not np.isfinite(vertices).all():
        raise ValueError(f"posed_vertices must be ({model.vertex_count}, 3) finite camera-frame points, "
                         f"got {vertices.shape}")
    if not (vertices[model.face_mask, 2] > 0).all():
        raise ValueError("the face is not in front of the camera (posed face vertices need z > 0)")


class _Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.laps["total"] = now - self.start
        self.last = now


@dataclass
class _Scene:
    """Everything fixed for one refinement: the head, its faces, the working view, the skin."""
    model: HeadModel
    photo_rgb: np.ndarray
    camera: Camera
    view: View
    vertices: torch.Tensor         # (V, 3) posed, camera frame
    normals: torch.Tensor          # (V, 3) their unit normals
    faces: torch.Tensor            # (F, 3) drawn triangles
    skin_faces: torch.Tensor       # (F,) bool: all corners bare skin
    core_faces: torch.Tensor       # (F,) bool: all corners on the central face
    config: RefineConfig

    @classmethod
    def build(cls, model, photo_rgb, posed_vertices, camera, faces, device, config) -> "_Scene":
        vertices = torch.as_tensor(np.asarray(posed_vertices, np.float32), device=device)
        faces_t = torch.as_tensor(faces.astype(np.int64), device=device)
        drawn = np.unique(faces)
        points = project(vertices[drawn], camera.focal, camera.principal)
        in_front = points[:, 2] > 0
        view = make_view(photo_rgb, camera, points[in_front, :2].cpu().numpy(), config.work_side)
        skin = torch.as_tensor(skin_mask(model), device=device)
        core = torch.as_tensor(core_mask(model), device=device)
        return cls(model, photo_rgb, camera, view, vertices, vertex_normals(vertices, faces_t), faces_t,
                   skin[faces_t].all(1), core[faces_t].all(1), config)

    def observe(self, vertices: torch.Tensor) -> Observation:
        """Skin pixels of ``vertices`` in the view, weighted by how squarely they face the camera
        and by whether their colour is skin's."""
        raster = rasterize_view(vertices, self.faces, self.view.camera)
        pixels = select_pixels(raster, self.faces, self.skin_faces)
        normals = pixel_normals(vertices, self.faces, pixels)
        points = (pixels.bary[..., None] * vertices[pixels.corners]).sum(1)
        facing = (normals * torch.nn.functional.normalize(-points, dim=1)).sum(1)
        low, high = self.config.min_facing, self.config.full_facing
        weight = ((facing - low) / (high - low)).clamp(0, 1)
        colours = torch.as_tensor(self.view.image, device=vertices.device)[pixels.rows, pixels.cols]
        weight = weight * skin_chroma_weight(colours, self.config.lighting)
        return Observation(pixels, colours, weight, self.core_faces[pixels.face])

    def residual(self, vertices: torch.Tensor, sh: torch.Tensor, albedo: torch.Tensor) -> float:
        """RMS colour error (linear 0..1) of the SH render on the weighted skin pixels."""
        with torch.no_grad():
            observation = self.observe(vertices)
            predicted = shade(pixel_normals(vertices, self.faces, observation.pixels), albedo, sh)
            error = (predicted - observation.colours).square().mean(1)
            weight = (observation.weight > 0).to(error.dtype)
            return float(torch.sqrt((weight * error).sum() / weight.sum().clamp(min=1)))


def _refine_shape(scene: _Scene, report: Report, config: ReliefConfig) -> tuple[torch.Tensor, Lighting]:
    """The relief on the face patch; the displacement comes back for every vertex (zero off the patch)."""
    faces_np = scene.faces.cpu().numpy()
    patch = face_patch(scene.model, faces_np.tobytes(), config.smoothing)
    ids = torch.as_tensor(patch.vertices, device=scene.vertices.device)
    local = torch.full((scene.model.vertex_count,), -1, dtype=torch.int64, device=ids.device)
    local[ids] = torch.arange(len(ids), device=ids.device)

    def observe(patch_vertices: torch.Tensor) -> Observation:
        vertices = scene.vertices.index_put((ids,), patch_vertices)
        seen = scene.observe(vertices)
        corners = local[seen.pixels.corners]
        keep = (corners >= 0).all(1)
        pixels = seen.pixels
        pixels = type(pixels)(pixels.rows[keep], pixels.cols[keep], pixels.face[keep], corners[keep], pixels.bary[keep])
        return Observation(pixels, seen.colours[keep], seen.weight[keep], seen.core[keep])

    def fit_light(patch_vertices: torch.Tensor, observation: Observation):
        normals = pixel_normals(patch_vertices, faces, observation.pixels)
        return fit_lighting(normals, observation.colours, observation.weight, observation.core, scene.config.lighting)

    faces = torch.as_tensor(patch.faces, device=ids.device)
    d, light = refine_relief(patch, scene.vertices[ids], scene.normals[ids], observe, fit_light, scene.view.camera,
                             config, lambda f: report("refining the shape", 0.1 + 0.7 * f))
    displacement = torch.zeros(scene.model.vertex_count, dtype=d.dtype, device=d.device)
    displacement[ids[:patch.free_count]] = d
    return displacement, light


def _textures(scene: _Scene, vertices: torch.Tensor, sh: torch.Tensor,
              skin: "PhotoWeight | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """De-lit albedo (uint8 sRGB) in the atlas, and the irradiance per vertex."""
    config, view = scene.config, scene.view
    x0, y0, x1, y1 = view.box
    with torch.no_grad():
        normals = vertex_normals(vertices, scene.faces)
        vertex_irradiance = spherical.irradiance(normals, sh).clamp(min=0)
        shading_image = _irradiance_image(scene, vertices, sh)
        screen = project(vertices, view.camera.focal, view.camera.principal)
        raster = rasterize_view(vertices, scene.faces, view.camera)
        visible = vertex_visibility(screen, raster, config.visibility_eps_m)
        facing = (normals * torch.nn.functional.normalize(-vertices, dim=1)).sum(1).clamp(min=0)
        low, high = config.lit_ramp
        lit = ((vertex_irradiance.mean(1) - low) / (high - low)).clamp(0, 1)
        weight = (visible * facing * lit).cpu().numpy()
        photo_xy = project(vertices, scene.camera.focal, scene.camera.principal)[:, :2].cpu().numpy()
    crop = srgb_to_linear(scene.photo_rgb[y0:y1, x0:x1])
    shading_full = cv2.resize(shading_image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    delit_linear = crop / np.maximum(shading_full, 0.02)
    xy = photo_xy - np.array([x0, y0])
    per_vertex = vertex_irradiance.cpu().numpy().astype(np.float32)
    weight = weight * _mirror_agreement(scene.model, crop, delit_linear, xy, weight, config)
    albedo, _ = unwrap(linear_to_srgb(delit_linear), xy, weight, scene.model, config.texture_size,
                       skin=None if skin is None else skin.moved((x0, y0)))
    return albedo, per_vertex


def _mirror_agreement(model: HeadModel, photo_linear: np.ndarray, delit_linear: np.ndarray, xy: np.ndarray,
                      weight: np.ndarray, config: RefineConfig) -> np.ndarray:
    """Per vertex, how far to trust its de-lit colour (1 = fully). A second-order light cannot follow
    a hard shadow: where it predicts more light than fell, dividing by it leaves a dark blotch (a
    stripe down the nose's shadowed flank), and a bright streak where it predicts too little. So on
    the side the photo shows darker, a de-lit luminance more than ``mirror_ratio`` apart from its
    mirror vertex's (seen, and brighter in the photo) is trusted less, and the texture takes the
    mirror there. Mirror pairs that agree (brows, lips, the mid-line) keep their own colour."""
    def at_vertices(image: np.ndarray) -> np.ndarray:
        luminance = cv2.GaussianBlur(np.ascontiguousarray(image @ np.asarray(LUMINANCE), np.float32), (0, 0), 2.0)
        return np.maximum(sample_bilinear(luminance, xy.astype(np.float32))[:, 0], 1e-4)

    own, photo = at_vertices(delit_linear), at_vertices(photo_linear)
    mirror = mirror_of(model)
    partner = mirror.index
    apart = np.abs(np.log(own / own[partner]))
    low, high = np.log(config.mirror_ratio)
    trust = np.clip((high - apart) / (high - low), 0.0, 1.0)
    darker = mirror.matched & (weight > 0) & (weight[partner] > 0) & (photo < photo[partner])
    return np.where(darker, trust, 1.0)


def _irradiance_image(scene: _Scene, vertices: torch.Tensor, sh: torch.Tensor) -> np.ndarray:
    """(h, w, 3) float32 irradiance at every view pixel the head covers; elsewhere the nearest
    covered pixel's (so upsampling does not darken the head's outline)."""
    camera = scene.view.camera
    raster = rasterize_view(vertices, scene.faces, camera)
    pixels = select_pixels(raster, scene.faces, torch.ones(len(scene.faces), dtype=torch.bool,
                                                             device=vertices.device))
    values = spherical.irradiance(pixel_normals(vertices, scene.faces, pixels), sh).clamp(min=0)
    image = np.ones((*camera.size, 3), np.float32)
    image[pixels.rows.cpu().numpy(), pixels.cols.cpu().numpy()] = values.cpu().numpy()
    covered = raster.mask.cpu().numpy()
    if covered.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
        image = image[rows, cols]
    return image


def _texture_of(model: HeadModel, values: np.ndarray, size: int) -> np.ndarray:
    """Per-vertex ``values`` (V, C) as an atlas image (S, S, C), gutters copied from the nearest texel."""
    texels = texel_map(model, size)
    image = np.zeros((size * size, values.shape[1]), np.float32)
    image[texels.texel] = interpolate(texels, values)
    return image[texels.nearest].reshape(size, size, values.shape[1])
