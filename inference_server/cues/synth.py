"""Training renders of the head model with their ground truth, reproducible from (seed, index).

Each sample is a random head — identity ~ N(0, 1) (spread scaled a little either way), sparse
expressions, and for half of them a smooth displacement the identity modes cannot represent — in a
random pose (yaw to +-70 deg), distance and off-axis position, painted with a varied albedo (skin
tone, blotches, freckles, stubble, lip and eye colours, a hairline with hair over the scalp), lit by
second-order SH (ambient + a key light that can come from the side, + specular), over a real-photo
or gradient background, with occluders (glasses-like bars, hand-like blobs), blur, noise and JPEG.
The crop is framed from the true landmarks with jitter (``crop.crop_transform``), and rendered
directly in crop pixels (a similarity of the image plane is a camera with another focal length,
principal point and a roll about the optical axis).

Ground truth at the output stride: ``nearness`` (camera depth as ``f (z_ref - z) / z_ref`` in crop
pixels, larger = nearer: the units of the crop's x and y), ``coords`` (where the pixel lies on the
*mean* head, model frame, in ``COORD_SCALE`` units), ``mask`` (skin or eye or mouth the camera sees,
not hair and not an occluder), the coefficients and the pose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
import torch

from ..head import sh as sh_light
from ..head.camera import head_rotation
from ..head.correspondence import LandmarkTable
from ..head.model import HeadModel
from ..head.raster import interpolate, project, rasterize, vertex_normals
from ..head.render import FRONT_FACING, drawn_faces, vertex_colours
from .crop import INPUT_SIDE, OUTPUT_STRIDE, crop_transform

COORD_SCALE = 0.1          # metres per unit of the correspondence channels
COORD_CENTRE = (0.0, 0.0, 0.0)
BACKGROUND_IMAGES = ("coffee", "chelsea", "rocket", "brick", "grass", "gravel", "hubble_deep_field",
                     "immunohistochemistry", "moon", "page", "coins", "horse", "colorwheel", "retina", "cell")
SKIN_LIGHT, SKIN_DARK = np.array([0.96, 0.80, 0.69]), np.array([0.30, 0.19, 0.13])


@dataclass
class Sample:
    image: np.ndarray        # (S, S, 3) uint8 crop
    nearness: np.ndarray     # (s, s) float32 crop pixels, larger = nearer, 0 outside mask
    coords: np.ndarray       # (s, s, 3) float32 mean-head position / COORD_SCALE
    mask: np.ndarray         # (s, s) bool
    id_coeffs: np.ndarray    # (100,) float32
    exp_weights: np.ndarray  # (53,) float32
    pose: np.ndarray         # (3,) yaw, pitch, roll degrees
    beyond: bool             # carries shape the model cannot represent


def _backgrounds() -> list[np.ndarray]:
    try:
        from skimage import data  # its sample photos are the renders' backgrounds
    except ImportError:
        raise RuntimeError("making training data needs scikit-image: pip install 'faceforge[train]'") from None

    images = []
    for name in BACKGROUND_IMAGES:
        try:
            image = getattr(data, name)()
        except Exception:  # an image missing from this scikit-image (some are fetched on demand)
            continue
        image = np.asarray(image, dtype=np.uint8 if np.asarray(image).dtype == np.uint8 else np.float64)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, 2)
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        images.append(np.ascontiguousarray(image[..., :3]))
    return images


class Generator:
    """Renders samples; build once (model arrays as tensors, background pool), call per index."""

    def __init__(self, model: HeadModel, seed: int = 0, side: int = INPUT_SIDE):
        self.model, self.seed, self.side = model, seed, side
        self.table = LandmarkTable.load()
        self.faces = torch.from_numpy(drawn_faces(model)).long()
        self.mean = model.vertices.astype(np.float32)
        self.id_basis = model.id_deltas.astype(np.float32).reshape(len(model.id_deltas), -1)
        self.exp_basis = model.exp_deltas.astype(np.float32).reshape(len(model.exp_deltas), -1)
        self.base_colours = vertex_colours(model)
        skin_parts = [model.part_names.index(p) for p in ("face", "head_neck")]
        self.skin = np.isin(model.vertex_part, skin_parts)
        self.painted_skin = self.skin & np.all(np.isclose(self.base_colours, (0.80, 0.58, 0.47)), 1)
        self.backgrounds = _backgrounds()

    @cached_property
    def brow_height(self) -> float:
        return float(self.mean[self.model.landmarks68[17:27], 1].mean())

    def __call__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, index])
        model = self.model
        id_coeffs = (rng.standard_normal(self.id_basis.shape[0]) * rng.uniform(0.7, 1.3)).astype(np.float32)
        exp_weights = np.zeros(self.exp_basis.shape[0], np.float32)
        for k in rng.choice(len(exp_weights), rng.poisson(1.5), replace=False):
            exp_weights[k] = rng.uniform(0.05, 0.8)
        shape = self.mean + (id_coeffs @ self.id_basis + exp_weights @ self.exp_basis).reshape(-1, 3)
        beyond = bool(rng.random() < 0.5)
        if beyond:
            shape = shape + smooth_displacement(model, shape, rng, self.skin)
        yaw = float(np.clip(rng.normal(0, 30), -70, 70))
        pose = np.array([yaw, np.clip(rng.normal(0, 10), -25, 25), np.clip(rng.normal(0, 8), -30, 30)])
        distance = math.exp(rng.uniform(math.log(0.35), math.log(1.8)))
        translation = np.array([rng.normal(0, 0.08), rng.normal(0, 0.08), 1.0]) * distance
        rotation = head_rotation(*pose)
        posed = shape @ rotation.T + translation
        focal = 1000.0   # photo focal (pixels); only the ratio to the crop matters
        landmarks = self.table.points(shape, yaw) @ rotation.T + translation
        photo_px = focal * landmarks[:, :2] / landmarks[:, 2:]
        jitter = np.array([rng.normal(0, 0.02), rng.normal(0, 0.02), rng.normal(0, 0.04), math.radians(rng.normal(0, 3))])
        to_crop = crop_transform(photo_px, self.side, jitter)
        albedo, hair = self._albedo(rng, shape)
        vertices, crop_focal, principal = self._camera(posed, to_crop, focal)
        v = torch.from_numpy(vertices)
        faces = self._front_faces(v, crop_focal, principal)
        raster = rasterize(project(v, crop_focal, principal), faces, (self.side, self.side), FRONT_FACING)
        image = self._shade(rng, v, faces, raster, albedo)
        image = self._composite(rng, image, raster.mask.numpy())
        occluded = self._occlude(rng, image, self.side)
        image = self._degrade(rng, image)
        nearness, coords, mask = self._truth(v, faces, raster, crop_focal, hair, occluded)
        return Sample(image, np.where(mask, nearness, 0).astype(np.float32), (coords * mask[..., None]).astype(np.float32),
                      mask, id_coeffs, exp_weights, pose.astype(np.float32), beyond)

    def _camera(self, posed: np.ndarray, to_crop: np.ndarray, focal: float):
        """Crop camera: vertices rolled about the optical axis, focal and principal point of the crop."""
        s = math.hypot(to_crop[0, 0], to_crop[1, 0])
        roll = np.eye(3)
        roll[:2, :2] = to_crop[:, :2] / s
        return (posed @ roll.T).astype(np.float32), focal * s, to_crop[:, 2]

    def _front_faces(self, v: torch.Tensor, focal: float, principal) -> torch.Tensor:
        """The triangles facing the camera (the rasteriser would cull the rest, at a cost)."""
        screen = project(v, focal, principal)[self.faces]
        area = ((screen[:, 1, 0] - screen[:, 0, 0]) * (screen[:, 2, 1] - screen[:, 0, 1])
                - (screen[:, 1, 1] - screen[:, 0, 1]) * (screen[:, 2, 0] - screen[:, 0, 0]))
        return self.faces[area * FRONT_FACING > 0]

    def _shade(self, rng, v: torch.Tensor, faces: torch.Tensor, raster, albedo: np.ndarray) -> np.ndarray:
        normals = torch.nn.functional.normalize(interpolate(vertex_normals(v, self.faces), faces, raster), dim=-1, eps=1e-9)
        points = interpolate(v, faces, raster)
        key = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.6), -rng.uniform(0.1, 1.0)])
        key /= np.linalg.norm(key)
        tint = rng.uniform(0.85, 1.15, 3)
        ambient = rng.uniform(0.1, 0.7) * rng.uniform(0.9, 1.1, 3)
        light = sh_light.directional(key, tint * rng.uniform(0.5, 1.3), ambient)
        if rng.random() < 0.5:
            fill = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0, 1)])
            light += sh_light.directional(fill / np.linalg.norm(fill), rng.uniform(0.1, 0.4, 3).mean() * np.ones(3))
        irradiance = sh_light.irradiance(normals, torch.from_numpy(light).float()).clamp(min=0)
        colour = interpolate(torch.from_numpy(albedo), faces, raster)
        to_eye = torch.nn.functional.normalize(-points, dim=-1, eps=1e-9)
        half = torch.nn.functional.normalize(to_eye + torch.from_numpy(key).float(), dim=-1, eps=1e-9)
        specular = rng.uniform(0, 0.3) * (normals * half).sum(-1).clamp(min=0) ** rng.uniform(8, 40)
        linear = colour * irradiance + specular[..., None]
        rgb = (linear.clamp(0, 1) ** (1 / 2.2)).numpy() * rng.uniform(0.8, 1.15)
        return rgb.clip(0, 1).astype(np.float32)

    def _albedo(self, rng, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear per-vertex albedo and the hair-covered vertices."""
        colours = self.base_colours.copy()
        tone = SKIN_LIGHT + rng.beta(1.3, 1.8) * (SKIN_DARK - SKIN_LIGHT)
        tone = tone * rng.uniform(0.92, 1.08, 3)
        skin = self.painted_skin
        colours[skin] = tone
        mean = self.mean
        blotches = np.zeros((len(mean), 3), np.float32)
        for _ in range(8):
            centre = mean[rng.choice(np.nonzero(skin)[0])]
            width = rng.uniform(0.01, 0.05)
            blotches += (np.exp(-((mean - centre) ** 2).sum(1) / (2 * width ** 2))[:, None] * rng.normal(0, 0.06, 3))
        colours[skin] += blotches[skin]
        colours[skin] *= 1 + rng.uniform(0, 0.06) * rng.standard_normal((int(skin.sum()), 1))   # freckles, pores
        painted = ~np.isclose(self.base_colours, (0.80, 0.58, 0.47)).all(1) & self.skin
        colours[painted] = self.base_colours[painted] * tone / np.array([0.80, 0.58, 0.47]) * rng.uniform(0.7, 1.2, 3)
        iris = np.isclose(self.base_colours, (0.18, 0.11, 0.06)).all(1)
        colours[iris] = rng.choice([(0.25, 0.14, 0.07), (0.35, 0.45, 0.6), (0.3, 0.4, 0.25), (0.1, 0.07, 0.05)]) * rng.uniform(0.7, 1.3)
        hair_colour = rng.choice([(0.05, 0.04, 0.03), (0.2, 0.12, 0.06), (0.45, 0.3, 0.15), (0.7, 0.6, 0.4), (0.6, 0.6, 0.6)])
        if rng.random() < 0.25:   # stubble / beard below the mouth line
            chin = skin & (mean[:, 1] < mean[self.model.landmarks68[48], 1] + rng.uniform(-0.02, 0.01)) & (mean[:, 2] > -0.02)
            darken = rng.uniform(0.2, 0.8) * (rng.random(len(mean)) < rng.uniform(0.4, 1.0))
            colours[chin] = colours[chin] * (1 - darken[chin, None]) + np.array(hair_colour) * darken[chin, None]
        hairline = self.brow_height + rng.uniform(0.015, 0.05)
        wave = 0.015 * np.sin(mean[:, 0] * rng.uniform(20, 80) + rng.uniform(0, 6))
        hair = self.skin & (mean[:, 1] + wave > hairline - 0.04 * (mean[:, 2] < -0.02))
        if rng.random() < 0.15:   # bald
            hair[:] = False
        if rng.random() < 0.5:   # hair over the ears and the back of the head
            hair |= self.skin & (mean[:, 2] < rng.uniform(-0.06, 0.0)) & (mean[:, 1] > self.brow_height - 0.06)
        colours[hair] = np.array(hair_colour) * (1 + 0.3 * rng.standard_normal((int(hair.sum()), 1)))
        return np.clip(colours, 0, 1).astype(np.float32) ** 2.2, hair

    def _composite(self, rng, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        side = self.side
        if self.backgrounds and rng.random() < 0.8:
            source = self.backgrounds[rng.integers(len(self.backgrounds))]
            h, w = source.shape[:2]
            size = int(rng.uniform(0.2, 1.0) * min(h, w))
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            back = cv2.resize(source[y:y + size, x:x + size], (side, side), interpolation=cv2.INTER_AREA) / 255.0
            back = back * rng.uniform(0.4, 1.1, 3)
        else:
            ramp = np.linspace(0, 1, side)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, side)[:, None, None]
            back = rng.uniform(0, 1, 3) * (1 - ramp) + rng.uniform(0, 1, 3) * ramp
            back = np.broadcast_to(back, (side, side, 3))
        return np.where(mask[..., None], rgb, back).astype(np.float32)

    def _occlude(self, rng, image: np.ndarray, side: int) -> np.ndarray:
        """Draw occluders into ``image`` in place; their mask."""
        occluded = np.zeros((side, side), np.uint8)
        if rng.random() < 0.25:   # a glasses-like bar across the eye line (the crop puts it at ~0.42)
            y = int(side * rng.uniform(0.36, 0.48))
            thickness = int(side * rng.uniform(0.015, 0.06))
            colour = rng.uniform(0, 0.6, 3)
            cv2.rectangle(occluded, (0, y), (side, y + thickness), 1, -1)
            image[occluded > 0] = colour
        if rng.random() < 0.15:   # a hand- or microphone-like blob from an edge
            blob = np.zeros_like(occluded)
            centre = (int(rng.uniform(0, side)), int(side * rng.uniform(0.75, 1.1)))
            axes = (int(side * rng.uniform(0.1, 0.3)), int(side * rng.uniform(0.1, 0.25)))
            cv2.ellipse(blob, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
            image[blob > 0] = (SKIN_LIGHT + rng.uniform(0, 1) * (SKIN_DARK - SKIN_LIGHT)) * rng.uniform(0.6, 1.0)
            occluded |= blob
        return occluded > 0

    def _degrade(self, rng, image: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
        image = image + rng.normal(0, rng.uniform(0, 0.03), image.shape)
        out = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        if rng.random() < 0.5:
            ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(30, 95))])
            out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        return out

    def _truth(self, v: torch.Tensor, faces: torch.Tensor, raster, focal: float, hair: np.ndarray,
               occluded: np.ndarray):
        """Ground truth at the output stride: each output pixel pools its OUTPUT_STRIDE^2 input
        pixels, and counts as seen only if all of them are."""
        z_ref = float(v[torch.from_numpy(self.model.face_mask), 2].mean())
        attributes = torch.from_numpy(np.concatenate([(self.mean - COORD_CENTRE) / COORD_SCALE, hair[:, None]], 1))
        values = interpolate(attributes.float(), faces, raster).numpy()
        seen = raster.mask.numpy() & (values[..., 3] < 0.5) & ~occluded
        nearness = np.where(seen, focal * (z_ref - raster.depth.numpy()) / z_ref, 0.0)
        k, out = OUTPUT_STRIDE, self.side // OUTPUT_STRIDE
        pool = lambda a: a.reshape(out, k, out, k, *a.shape[2:]).mean((1, 3))
        mask = pool(seen.astype(np.float32)) == 1.0
        return pool(nearness).astype(np.float32), pool(values[..., :3]), mask


def smooth_displacement(model: HeadModel, vertices: np.ndarray, rng, skin: np.ndarray, bumps: int = 14,
                        width_m: tuple = (0.015, 0.04), amplitude_m: float = 0.004) -> np.ndarray:
    """Gaussian bumps of random width and sign along the normals of the skin: low-frequency shape
    the identity modes do not span (the "beyond the model" heads)."""
    normals = vertex_normals(torch.from_numpy(vertices), torch.from_numpy(model.faces)).numpy()
    centres = vertices[rng.choice(np.nonzero(model.face_mask)[0], bumps)]
    widths = rng.uniform(*width_m, bumps)
    heights = rng.uniform(-amplitude_m, amplitude_m, bumps)
    offset = np.zeros(len(vertices), np.float32)
    for centre, width, height in zip(centres, widths, heights):
        offset += height * np.exp(-((vertices - centre) ** 2).sum(1) / (2 * width ** 2))
    return (normals * (offset * skin)[:, None]).astype(np.float32)
