"""Head mode for one detected face: FaceMesh landmarks -> fitted morphable head -> the reply's arrays.

Stages (each reported before it starts, so a cancelled request stops between them): cues (the cues
network's dense correspondences, with ``shape_cues network``), fit (pose, focal, identity, expressions), refine
(photometric refinement, ``refine`` light by default: SH lighting, de-lit albedo; full: shape from
shading, a displacement along the normals added to the head's vertices), texture (without refinement:
visibility in the photo's camera, the photo unwrapped into the model's atlas with mirror and skin
fill), depth (the fitted head rendered in the photo's camera).
The reply carries the canonical head — identity at neutral expression — with the fitted expression
weights, and the pose apart from the shape (``HEAD_FACE_ARRAYS`` in the protocol); what every head of
the model shares — topology, atlas UVs, expression deltas — is ``model_arrays``, sent once per client.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from addon.wire.errors import ErrorCode, ProtocolError
from addon.wire.axes import CAMERA_TO_BLENDER, MODEL_TO_BLENDER

from ..detail import detail_map
from .camera import Camera
from .basis import ShapeBasis
from .correspondence import LandmarkTable
from .fit import HeadFit, HeadFitConfig, View, fit_head, fit_views
from .model import HeadModel
from .photo_landmarks import crop_to_photo
from .photo_regions import SkinRegions
from .photometric import refine_head
from .raster import project, rasterize, vertex_facing, vertex_normals, vertex_visibility
from .render import FRONT_FACING, depth_map, drawn_faces
from .same_person import check_one_person, farthest_apart_mm, identities_apart_mm
from .sh import rotate as rotate_sh
from .texture import PhotoView, unwrap, unwrap_views
from .topology import KEPT_VERTICES, MATERIALS, to_blender, topology

VISIBILITY_MAX_SIDE = 1024   # the z-buffer for texture visibility is at most this many pixels across
VISIBILITY_EPS_M = 0.004     # a vertex this close behind the z-buffer still counts as seen
MAX_ATLAS = 2048

StageReport = Callable[[str, str], None]  # (stage, text): may raise ProtocolError(cancelled)


@dataclass(frozen=True)
class PersonPhoto:
    """One of several photos of a person: the photo, FaceMesh's 478 points in its face crop, the crop's
    transform, and the focal length from its EXIF (None: fitted)."""

    rgb: np.ndarray
    points_crop: np.ndarray
    to_crop: np.ndarray
    focal_px: float | None = None


class HeadReconstructor:
    """Owns the model and its landmark basis; one instance per worker thread."""

    def __init__(self, model: HeadModel, device: torch.device, fit_config: HeadFitConfig = HeadFitConfig(),
                 cues=None):
        """``cues``: a ``cues.predict.CuesPredictor`` (learned shape cues), or None to fit landmarks alone."""
        self.model = model
        self.cues = cues
        self.device = device
        self.fit_config = fit_config
        self.table = LandmarkTable.load()
        self.basis = ShapeBasis(model, self.table, device)
        # What can hide a vertex from the camera: the kept geometry (no see-through shells, no eyelashes).
        self.occluders = torch.from_numpy(topology(model).triangles).long()
        self.regions = SkinRegions()
        self.model_arrays = self._model_arrays()
        digest = hashlib.sha256()
        for name, array in sorted(self.model_arrays.items()):
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        self.model_fingerprint = digest.hexdigest()[:32]

    def _model_arrays(self) -> dict:
        """``HEAD_MODEL_ARRAYS``: the same for every head of this model, sent once (``head_model`` op)."""
        shape = topology(self.model)
        return {"polygon_sizes": shape.polygon_sizes, "polygon_vertices": shape.polygon_vertices,
                "corner_uvs": shape.corner_uvs, "polygon_material": shape.polygon_material,
                "expression_deltas": to_blender(self.model.exp_deltas[:, :KEPT_VERTICES].astype(np.float32))}

    def reconstruct(self, rgb: np.ndarray, points_crop: np.ndarray, to_crop: np.ndarray, config,
                    stage: StageReport, focal_px: float | None = None) -> tuple[dict, dict]:
        """Arrays (``HEAD_ARRAYS``) and meta of one face; ``points_crop`` are FaceMesh's 478 points.
        ``focal_px`` (from EXIF) is kept fixed by the fit; without it the fit estimates the focal."""
        landmarks_px = crop_to_photo(points_crop, to_crop)
        cues = self.dense_cues([rgb], [landmarks_px], config, stage)[0]
        stage("fit", "fitting the head model")
        fit = fit_head(self.model, landmarks_px, rgb.shape[:2], self.fit_config, self.device, focal_px=focal_px,
                       basis=self.basis, cues=cues)
        camera = Camera(fit.focal, fit.principal, rgb.shape[:2])
        atlas_side = min(MAX_ATLAS, 2 * config.texture_size)
        extra_arrays, extra_meta, displacement = {}, {}, None
        skin = self.regions.weight(rgb, landmarks_px, self.photo_positions(fit.posed_vertices, camera))
        if config.refine != "off":
            refined = refine_head(self.model, rgb, fit.posed_vertices, camera, config.refine, device=self.device,
                                  texture_size=atlas_side, report=lambda text, fraction: stage("refine", text),
                                  skin=skin)
            texture = refined.albedo_texture
            extra_arrays["vertex_irradiance"] = refined.vertex_irradiance[:KEPT_VERTICES].astype(np.float16)
            extra_meta = self.lighting_meta(refined)
            if config.refine == "full":  # shape from shading, baked into the head every export then carries
                displacement = refined.displacement
                extra_arrays["vertex_displacement"] = displacement[:KEPT_VERTICES].astype(np.float32)
                extra_meta["displacement"] = {"unit": "metre", "in_vertices": True,
                                              "rms_mm": round(float(np.sqrt(np.mean(displacement ** 2))) * 1000, 3)}
        else:
            stage("texture", "unwrapping the photo onto the head")
            image_xy, weight = self.seen_from_camera(fit.posed_vertices, camera)
            texture, coverage = unwrap(rgb, image_xy, weight, self.model, atlas_side, skin=skin)
            extra_meta = {"texture_coverage": round(float(coverage.mean()), 4)}
        detail = detail_map(texture, config.detail_sigma, [], atlas_side * 0.75)
        depth, mask = self._depth(fit, camera, config, stage)
        arrays = self.arrays(fit, landmarks_px, texture, detail, depth, mask, displacement) | extra_arrays
        meta = self.meta(fit, camera, self.shape_source(config)) | {"detail_unit": "luminance"} | extra_meta
        meta["camera"]["focal_source"] = "exif" if focal_px else "fitted"
        return arrays, meta

    def reconstruct_views(self, photos: list[PersonPhoto], config, stage: StageReport,
                          fits: list[HeadFit] | None = None, fits_source: str = "landmarks") -> tuple[dict, dict]:
        """One head from several photos of one person: one identity fitted to all of them (``fit_views``;
        or ``fits`` made already, one per photo), the texture blended from every photo that sees each
        texel (``unwrap_views``), posed, lit and depth-mapped as the first photo shows it. With the cues
        network, photos of someone else are refused (``one_person``). Photometric
        refinement needs one photo's lighting, so the texture here is the photos' colour as lit
        (``meta["refine"]`` says so)."""
        landmarks = [crop_to_photo(photo.points_crop, photo.to_crop) for photo in photos]
        source, checked = fits_source, None   # what shaped fits made elsewhere (a video's key frames)
        if fits is None:
            source = self.shape_source(config)
            cues = self.dense_cues([photo.rgb for photo in photos], landmarks, config, stage)
            stage("fit", f"fitting one head to {len(photos)} photos")
            views = [View(marks, photo.rgb.shape[:2], photo.focal_px, cue)
                     for photo, marks, cue in zip(photos, landmarks, cues)]
            fits = fit_views(self.model, views, self.fit_config, self.device, basis=self.basis)
            if source == "network":
                stage("fit", "checking that the photos show one person")
                checked = self.one_person(views, fits)
        stage("texture", f"blending {len(photos)} photos onto the head")
        views, cameras = [], []
        for photo, marks, fit in zip(photos, landmarks, fits):
            camera = Camera(fit.focal, fit.principal, photo.rgb.shape[:2])
            skin = self.regions.weight(photo.rgb, marks, self.photo_positions(fit.posed_vertices, camera))
            image_xy, weight = self.seen_from_camera(fit.posed_vertices, camera)
            views.append(PhotoView(photo.rgb, image_xy, weight, skin))
            cameras.append(camera)
        atlas_side = min(MAX_ATLAS, 2 * config.texture_size)
        texture, coverage = unwrap_views(views, self.model, atlas_side)
        detail = detail_map(texture, config.detail_sigma, [], atlas_side * 0.75)
        depth, mask = self._depth(fits[0], cameras[0], config, stage)
        arrays = self.arrays(fits[0], landmarks[0], texture, detail, depth, mask)
        meta = self.meta(fits[0], cameras[0], source) | {"detail_unit": "luminance"}
        meta["camera"]["focal_source"] = "exif" if photos[0].focal_px else "fitted"
        meta["texture_coverage"] = round(float(coverage.mean()), 4)
        meta["refine"] = "off: several photos (the texture is their colour as lit)"
        meta["photos"] = []
        for number, (photo, fit, camera) in enumerate(zip(photos, fits, cameras), 1):
            own = self.meta(fit, camera, source)  # each photo's pose and camera, as the head's are said
            own["camera"]["focal_source"] = "exif" if photo.focal_px else "fitted"
            meta["photos"].append({"photo": number, "pose": own["pose"], "camera": own["camera"],
                                   "landmark_error_eye_pct": round(fit.residual_eye_pct, 3),
                                   "expression_weights": [round(float(w), 4) for w in fit.exp_weights]})
            if checked is not None:
                meta["photos"][-1]["cue_residual_rise"] = round(checked[0][number - 1], 4)
                meta["photos"][-1]["identity_apart_mm"] = checked[1][number - 1]   # None: too turned to compare
        meta["same_person_check"] = "passed" if checked is not None else "not run: needs the cues network"
        return arrays, meta

    def one_person(self, views: list[View], joint: list[HeadFit]) -> tuple[list[float], list[float | None]]:
        """Each photo's cue residual rise under the joint head and how far its regressed face lies from
        the farthest other photo's, mm (``same_person``), or NotOnePerson naming the photo that shows
        someone else."""
        def together(indices: list[int]) -> list[HeadFit]:
            return fit_views(self.model, [views[i] for i in indices], self.fit_config, self.device, basis=self.basis)

        own = [together([i])[0] for i in range(len(views))]
        apart = identities_apart_mm(self.model, [view.cues.identity for view in views], [fit.yaw_deg for fit in own])
        return check_one_person(own, joint, [view.cues for view in views], together, apart), farthest_apart_mm(apart)

    def shape_source(self, config) -> str:
        """What shapes the head for ``config.shape_cues``: ``network`` or ``landmarks``. ``auto`` (the
        default) is the network when its weights loaded, else landmarks; an explicit ``network``
        without them is refused."""
        if config.shape_cues == "landmarks" or (config.shape_cues == "auto" and self.cues is None):
            return "landmarks"
        if self.cues is None:
            raise ProtocolError(ErrorCode.NO_MODEL, "shape_cues 'network' needs the cues network's weights, "
                                "which this server could not load (see its log; `python -m inference_server "
                                "model install CHECKPOINT` installs one)")
        return "network"

    def dense_cues(self, photos: list[np.ndarray], landmarks: list[np.ndarray], config, stage: StageReport) -> list:
        """The cues network's dense cues per photo when ``shape_source`` is the network, else None per photo."""
        if self.shape_source(config) != "network":
            return [None] * len(photos)
        stage("cues", "reading the face's shape")
        return [self.cues(rgb, marks) for rgb, marks in zip(photos, landmarks)]

    def _depth(self, fit: HeadFit, camera: Camera, config, stage: StageReport) -> tuple[np.ndarray, np.ndarray]:
        """The fitted head's depth map in the photo's camera: nearness, zero off the head."""
        stage("depth", "rendering the depth map")
        depth, mask, _ = depth_map(fit.posed_vertices, drawn_faces(self.model), camera, config.depth_size)
        return np.where(mask, depth[mask].max(initial=0.0) - depth, 0.0).astype(np.float32), mask

    @staticmethod
    def lighting_meta(refined) -> dict:
        """The refinement's lighting (in the Blender world of ``pose``), its photometric residual and units."""
        sh_blender = rotate_sh(refined.sh, CAMERA_TO_BLENDER)
        return {"lighting": {"sh": sh_blender.round(5).tolist(), "frame": "blender world"},
                "photometric_residual": {k: round(float(v), 5) for k, v in refined.residual.items()},
                "refine_seconds": {k: round(float(v), 3) for k, v in refined.timings.items()}}

    @staticmethod
    def photo_positions(posed: np.ndarray, camera: Camera) -> np.ndarray:
        """(V, 2) where each vertex lands in the photo; NaN behind the camera."""
        with torch.inference_mode():
            screen = project(torch.from_numpy(np.asarray(posed, np.float32)), camera.focal, camera.principal)
        xy = screen[:, :2].numpy().copy()
        xy[np.asarray(posed)[:, 2] <= 0] = np.nan
        return xy

    def seen_from_camera(self, posed: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        """Each vertex's photo pixel and how well the photo shows it: z-buffer visibility x facing."""
        scale = min(1.0, VISIBILITY_MAX_SIDE / max(camera.size))
        size = (max(1, round(camera.size[0] * scale)), max(1, round(camera.size[1] * scale)))
        with torch.inference_mode():
            vertices = torch.from_numpy(np.asarray(posed, np.float32))
            screen = project(vertices, camera.focal, camera.principal)
            small = torch.cat([screen[:, :2] * scale, screen[:, 2:]], 1)
            raster = rasterize(small, self.occluders, size, FRONT_FACING)
            seen = vertex_visibility(small, raster, VISIBILITY_EPS_M)
            facing = vertex_facing(vertices, vertex_normals(vertices, torch.from_numpy(self.model.faces).long()))
            weight = seen.float() * facing.clamp(0.0, 1.0)
        return screen[:, :2].numpy(), weight.numpy()

    def arrays(self, fit: HeadFit, landmarks_px, texture, detail, depth, mask, displacement=None) -> dict:
        """``displacement``: ``refine full``'s metres along the normals, added to the neutral head here so
        that Blender, the batch's files and the CLI's exports all carry the refined shape."""
        neutral = self.model.shape(fit.id_coeffs)
        if displacement is not None:
            normals = vertex_normals(torch.from_numpy(np.asarray(neutral, np.float32)),
                                     torch.from_numpy(self.model.faces).long()).numpy()
            neutral = neutral + displacement[:, None] * normals
        return {
            "vertices": to_blender(neutral[:KEPT_VERTICES]),
            "expression_weights": fit.exp_weights.astype(np.float32),
            # float16: the luminance high-pass lies within +-0.2, where float16 steps are below 1e-4
            "texture": texture, "detail": detail.astype(np.float16), "depth": depth, "mask": mask,
            "landmarks": to_blender(self.table.points(neutral, fit.yaw_deg)),
            "landmarks_image": landmarks_px[:, :2].astype(np.float32),
        }

    def meta(self, fit: HeadFit, camera: Camera, shape_cues: str) -> dict:
        rotation = CAMERA_TO_BLENDER @ fit.rotation @ MODEL_TO_BLENDER.T
        matrix = np.eye(4)
        matrix[:3, :3], matrix[:3, 3] = rotation, CAMERA_TO_BLENDER @ fit.translation
        return {"geometry": "head", "materials": list(MATERIALS), "expressions": list(self.model.exp_names),
                "model_fingerprint": self.model_fingerprint,
                "pose": {"matrix": matrix.round(6).tolist(), "yaw_deg": round(fit.yaw_deg, 2)},
                "camera": {"focal_px": round(camera.focal, 2), "principal_px": list(camera.principal),
                           "image_size": [camera.size[1], camera.size[0]]},
                "identity": [round(float(c), 5) for c in fit.id_coeffs],
                "fit": {"landmark_error_px": round(fit.residual_px, 3),
                        "landmark_error_eye_pct": round(fit.residual_eye_pct, 3),
                        "shape_cues": shape_cues},
                "vertex_count": KEPT_VERTICES, "polygon_count": int(len(topology(self.model).polygon_sizes))}
