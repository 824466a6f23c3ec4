"""Plain shaded renders of the head with the rasteriser: what FaceMesh sees when the landmark table
is derived, the synthetic photos of the evaluation, and overlays of a fit on its photo.

The model has no texture, so parts get flat colours (skin; darker lips and brows; white sclera,
dark iris and lashes) — enough contrast for a face detector and FaceMesh to find the features.
"""
from __future__ import annotations

import numpy as np
import torch

from .camera import Camera
from .model import HeadModel
from .raster import Raster, interpolate, project, rasterize, vertex_normals

# See-through helper shells (tear film, eye blend and occlusion): never drawn, never occlude.
HIDDEN_MATERIALS = ("M_LacrimalFluid", "M_EyeBlend", "M_EyeOcclusion")
FRONT_FACING = -1   # signed screen area of an outward triangle in the y-down camera (raster.rasterize)

SKIN = (0.80, 0.58, 0.47)
MATERIAL_COLOURS = {"M_ScleraLeft": (0.92, 0.92, 0.9), "M_ScleraRight": (0.92, 0.92, 0.9),
                    "M_IrisLeft": (0.92, 0.92, 0.9), "M_IrisRight": (0.92, 0.92, 0.9),
                    "M_EyeLashes": (0.06, 0.05, 0.04), "M_Teeth": (0.9, 0.88, 0.82),
                    "M_GumsTongue": (0.55, 0.22, 0.22)}
IRIS, IRIS_RADIUS_M = (0.18, 0.11, 0.06), 0.0058
LIPS, BROWS = (0.62, 0.30, 0.30), (0.25, 0.17, 0.12)
BROW_HALF_WIDTH_M = 0.004
LIP_OUTER = list(range(48, 60))          # Multi-PIE 68-point indices
BROW_LINES = (list(range(17, 22)), list(range(22, 27)))


def drawn_faces(model: HeadModel) -> np.ndarray:
    """Triangles that a render shows (the helper shells left out)."""
    hidden = np.isin(np.asarray(model.material_names)[model.face_material], HIDDEN_MATERIALS)
    return model.faces[~hidden]


def vertex_colours(model: HeadModel) -> np.ndarray:
    """(V, 3) float32 albedo: skin, lips and brows painted on the face by the 68 landmarks."""
    colours = np.tile(np.float32(SKIN), (model.vertex_count, 1))
    for material, colour in MATERIAL_COLOURS.items():
        index = model.material_names.index(material)
        colours[np.unique(model.faces[model.face_material == index])] = colour
    _paint_irises(model, colours)
    face = np.nonzero(model.face_mask)[0]
    xy = model.vertices[face, :2]
    marks = model.vertices[model.landmarks68]
    colours[face[_inside_polygon(xy, marks[LIP_OUTER, :2])]] = LIPS
    for line in BROW_LINES:
        points = marks[line, :2]
        distance = np.min([_segment_distance(xy, a, b) for a, b in zip(points[:-1], points[1:])], axis=0)
        colours[face[distance < BROW_HALF_WIDTH_M]] = BROWS
    return colours


def _paint_irises(model: HeadModel, colours: np.ndarray) -> None:
    """The model's iris material covers the eyeball's whole front half (a texture draws the iris):
    paint a disc of ``IRIS_RADIUS_M`` around each eyeball's front pole."""
    for part in ("eyeball_left", "eyeball_right"):
        eyeball = np.nonzero(model.vertex_part == model.part_names.index(part))[0]
        points = model.vertices[eyeball]
        pole = points[np.argmax(points[:, 2])]
        disc = (np.linalg.norm(points[:, :2] - pole[:2], axis=1) < IRIS_RADIUS_M) & (points[:, 2] > pole[2] - 0.008)
        colours[eyeball[disc]] = IRIS


def _inside_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: does each 2D point lie inside the closed polygon?"""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    x, y = points[:, :1], points[:, 1:]
    straddles = (a[:, 1] > y) != (b[:, 1] > y)
    crossing_x = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / np.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1])
    return (straddles & (x < crossing_x)).sum(1) % 2 == 1


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = np.clip(((points - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-12), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1)


def render_shaded(vertices_cam: torch.Tensor, faces: torch.Tensor, colours: torch.Tensor, camera: Camera,
                  background=(0.35, 0.38, 0.42)) -> tuple[np.ndarray, Raster]:
    """RGB uint8 (H, W, 3) with Lambert shading (a key light above the camera plus ambient) and the
    raster it came from."""
    screen = project(vertices_cam, camera.focal, camera.principal)
    raster = rasterize(screen, faces, camera.size, FRONT_FACING)
    normals = interpolate(vertex_normals(vertices_cam, faces), faces, raster)
    normals = torch.nn.functional.normalize(normals, dim=-1, eps=1e-9)
    to_light = torch.tensor([0.3, -0.5, -1.0], dtype=normals.dtype, device=normals.device)  # up-right of the lens
    lambert = (normals * torch.nn.functional.normalize(to_light, dim=0)).sum(-1).clamp(min=0)
    albedo = interpolate(colours, faces, raster)
    rgb = albedo * (0.35 + 0.75 * lambert[..., None])
    rgb = torch.where(raster.mask[..., None], rgb, torch.tensor(background, dtype=rgb.dtype, device=rgb.device))
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(), raster


def depth_map(posed_vertices: np.ndarray, faces: np.ndarray, camera: Camera, max_side: int = 512
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera-z depth (metres, 0 where empty) and mask of a posed head seen by ``camera``, at most
    ``max_side`` pixels on the longer side, and the scale from photo pixels to map pixels."""
    height, width = camera.size
    scale = min(1.0, max_side / max(height, width))
    small = Camera(camera.focal * scale, (camera.principal[0] * scale, camera.principal[1] * scale),
                   (max(1, round(height * scale)), max(1, round(width * scale))))
    with torch.inference_mode():
        screen = project(torch.from_numpy(np.asarray(posed_vertices, np.float32)), small.focal, small.principal)
        raster = rasterize(screen, torch.from_numpy(faces).long(), small.size, FRONT_FACING)
    mask = raster.mask.numpy()
    return np.where(mask, raster.depth.numpy(), 0.0).astype(np.float32), mask, scale


def clay_views(canonical_vertices: np.ndarray, model: HeadModel, size: int = 384,
               yaws=(0.0, 45.0, 90.0)) -> np.ndarray:
    """Front / 45 deg / profile clay renders of a canonical head side by side (uint8 RGB)."""
    from .camera import head_rotation

    faces = torch.from_numpy(drawn_faces(model)).long()
    clay = torch.full((model.vertex_count, 3), 0.75)
    camera = Camera(size * 3.2, (size / 2, size / 2), (size, size))
    centre = canonical_vertices[model.face_full_mask].mean(0)
    views = []
    for yaw in yaws:
        posed = (canonical_vertices - centre) @ head_rotation(yaw).T + [0.0, 0.0, 1.0]
        rgb, _ = render_shaded(torch.from_numpy(posed.astype(np.float32)), faces, clay, camera)
        views.append(rgb)
    return np.concatenate(views, 1)


def overlay(photo: np.ndarray, posed_vertices: np.ndarray, model: HeadModel, camera: Camera,
            opacity: float = 0.6) -> np.ndarray:
    """The photo with the fitted head drawn over it (shaded, part colours) where it covers."""
    faces = torch.from_numpy(drawn_faces(model)).long()
    colours = torch.from_numpy(vertex_colours(model))
    rgb, raster = render_shaded(torch.from_numpy(np.asarray(posed_vertices, np.float32)), faces, colours, camera)
    mask = raster.mask.numpy()[..., None]
    blended = photo * (1 - opacity * mask) + rgb * (opacity * mask)
    return blended.round().astype(np.uint8)
