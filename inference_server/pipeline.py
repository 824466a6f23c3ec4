"""The reconstruction pipeline: image bytes -> per face depth, mesh, UVs, texture and detail map.

Stages (timed individually): load -> detect (MTCNN) -> align+crop -> landmarks (FaceMesh) ->
depth (thin-plate fit + rasterised mask) -> mesh (contour + grid Delaunay, spike removal) -> detail.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from addon.wire.protocol import ErrorCode, ProtocolError

from . import __version__, alignment, meshing
from . import landmarks as lm
from .config import ReconstructionConfig
from .detection import Detection, FaceDetector
from .image_loading import load_rgb
from .surface import fit_height_field

FACE_WIDTH_M = 0.14  # bizygomatic width of an average adult face: sets the metric scale
SILHOUETTE_WEIGHT = 0.1


@dataclass
class FaceResult:
    index: int
    meta: dict
    arrays: dict


@dataclass
class Result:
    faces: list[FaceResult]
    meta: dict = field(default_factory=dict)


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def as_ms(self) -> dict:
        return {k: round(v * 1000, 2) for k, v in self.seconds.items()}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else CPU; explicit names are validated."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch sees no CUDA GPU")
    return device


class FacePipeline:
    """Holds the models; ``reconstruct`` is called from one worker thread at a time."""

    def __init__(self, device: torch.device, defaults: ReconstructionConfig = ReconstructionConfig()):
        self.device = device
        self.defaults = defaults
        self.detector = FaceDetector(device)
        self.landmarker = lm.LandmarkModel()

    def info(self) -> dict:
        return {"server_version": __version__, "device": str(self.device),
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
                "torch": torch.__version__,
                "models": ["mtcnn (facenet-pytorch)", "face_mesh 478 (mediapipe)"],
                "defaults": self.defaults.__dict__}

    def reconstruct(self, image: bytes | memoryview, params: dict | None = None) -> Result:
        config = self.defaults.with_params(params or {})
        timer = Timer()
        with timer.stage("load"):
            rgb = load_rgb(image, config.max_pixels)
        with timer.stage("detect"):
            detections = self.detector.detect(rgb, config.detect_max_side, config.min_face_score,
                                              config.min_face_fraction)
        chosen = select_faces(detections, config.face)
        faces, skipped = [], []
        for index, detection in chosen:
            face = self._reconstruct_face(rgb, detection, index, config, timer)
            (faces if face is not None else skipped).append(face or index)
        if not faces:
            raise ProtocolError(ErrorCode.NO_FACE, "a face was detected but its landmarks could not be located; "
                                                   "try a sharper, more frontal photo")
        meta = {"image_size": [int(rgb.shape[1]), int(rgb.shape[0])], "faces_detected": len(detections),
                "skipped_faces": skipped, "timings_ms": timer.as_ms(), "config": config.__dict__}
        return Result(faces=faces, meta=meta)

    def _reconstruct_face(self, rgb, detection: Detection, index: int, config: ReconstructionConfig,
                          timer: Timer) -> FaceResult | None:
        size = config.texture_size
        with timer.stage("align"):
            to_crop = alignment.crop_transform(detection, size, config.crop_margin)
            crop = alignment.warp(rgb, to_crop, size)
        with timer.stage("landmarks"):
            points = self.landmarker.locate(crop)
        if points is None:
            return None
        with timer.stage("depth"):
            geometry = FaceGeometry(points, config)
            depth, mask = geometry.depth_map(config.depth_size)
        with timer.stage("mesh"):
            vertices, faces, uvs = geometry.mesh()
        with timer.stage("detail"):
            eyes = [points[list(ring), :2] for ring in lm.EYE_RINGS]
            detail = detail_map(crop, config.detail_sigma, eyes, geometry.pixel_width)
        to_image = alignment.invert(to_crop)
        arrays = {
            "vertices": vertices, "faces": faces, "uvs": uvs, "texture": crop, "detail": detail,
            "depth": depth, "mask": mask,
            "landmarks": geometry.to_metres(points[:, :2], geometry.field.sample(points[:, :2])),
            "landmarks_image": alignment.apply(to_image, points[:, :2]).astype(np.float32),
        }
        meta = {"index": index, "box": detection.box.round(2).tolist(), "score": round(detection.score, 5),
                "points5": detection.points.round(2).tolist(), "crop_to_image": to_image.tolist(),
                "vertex_count": int(len(vertices)), "triangle_count": int(len(faces)),
                "face_width_m": FACE_WIDTH_M, "mouth_open": geometry.mouth_open}
        return FaceResult(index=index, meta=meta, arrays=arrays)


def select_faces(detections: list[Detection], choice: str) -> list[tuple[int, Detection]]:
    if not detections:
        raise ProtocolError(ErrorCode.NO_FACE, "no face found in the image")
    indexed = list(enumerate(detections))
    if choice == "all":
        return indexed
    index = 0 if choice == "largest" else int(choice)
    if index >= len(detections):
        raise ProtocolError(ErrorCode.NO_FACE, f"face {index} requested but only {len(detections)} found (0 = largest)")
    return [indexed[index]]


class FaceGeometry:
    """Landmarks (crop pixels) -> smooth height field, region outline and metric mesh."""

    def __init__(self, points: np.ndarray, config: ReconstructionConfig):
        self.config = config
        surface = points[:lm.SURFACE_LANDMARKS]
        # Silhouette landmarks have the least reliable depth (the surface is edge-on there); letting
        # them pull less keeps the fit from rippling along the rim.
        weights = np.ones(len(surface))
        weights[lm.FACE_OVAL] = SILHOUETTE_WEIGHT
        self.field = fit_height_field(surface, weights)
        self.pixel_width = float(np.linalg.norm(points[lm.LEFT_CHEEK] - points[lm.RIGHT_CHEEK]))
        self.scale = FACE_WIDTH_M / self.pixel_width
        oval = surface[lm.FACE_OVAL, :2]
        centre = oval.mean(0)
        radius = float(np.linalg.norm(oval - centre, axis=1).mean())
        self.outline = centre + (oval - centre) * (1 - config.contour_inset * self.pixel_width / radius)
        gap = float(np.linalg.norm(points[lm.UPPER_LIP_MID, :2] - points[lm.LOWER_LIP_MID, :2]))
        self.mouth_open = gap > 0.02 * self.pixel_width  # parted lips: a hole, not a sheet across the mouth
        self.holes = [surface[lm.INNER_LIPS, :2]] if self.mouth_open else []
        rim = meshing.closed_spline(self.outline, 2.0)
        self.rim_height = float(self.field.sample(rim).mean())
        self.centre = np.array([(self.outline[:, 0].min() + self.outline[:, 0].max()) / 2,
                                (self.outline[:, 1].min() + self.outline[:, 1].max()) / 2])

    def to_metres(self, xy: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Crop pixels + heights -> Blender axes in metres: X right, Z up, nearer = more negative Y."""
        x = (xy[:, 0] - self.centre[0]) * self.scale
        z = -(xy[:, 1] - self.centre[1]) * self.scale
        y = -(heights - self.rim_height) * self.scale
        return np.stack([x, y, z], 1).astype(np.float32)

    def depth_map(self, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, R) height in metres in front of the face's deepest point (0 outside the mask), and the mask."""
        size = self.config.texture_size
        scale = resolution / size
        mask = meshing.region_mask(meshing.spline_rings(self.outline * scale, [h * scale for h in self.holes], 0.5),
                                   resolution)
        rows, cols = np.nonzero(mask)
        centres = (np.stack([cols, rows], 1) + 0.5) * (size / resolution)
        heights = self.field.sample(centres)
        depth = np.zeros((resolution, resolution), np.float32)
        depth[rows, cols] = (heights - heights.min()) * self.scale
        return depth, mask

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.config.texture_size
        spacing = self.pixel_width / self.config.resolution
        points, faces = meshing.triangulate_region(self.outline, self.holes, spacing, size)
        faces = meshing.face_the_viewer(points, faces)
        vertices = self.to_metres(points, self.field.sample(points))
        faces = meshing.remove_spikes(vertices, faces)
        faces = meshing.largest_component(len(vertices), faces)
        faces, vertices, points = meshing.compact(faces, vertices, points)
        vertices = meshing.taubin_smooth(vertices, faces, self.config.smooth_iterations)
        uvs = np.stack([points[:, 0] / size, 1.0 - points[:, 1] / size], 1).astype(np.float32)
        return vertices, faces, uvs


DETAIL_LIMIT = 0.04  # luminance units: wrinkles and pores stay linear, glasses frames and brows saturate


def detail_map(texture: np.ndarray, sigma: float, eyes: list[np.ndarray], face_width: float) -> np.ndarray:
    """High-pass of the luminance (image minus its Gaussian low-pass): the 'detail filling' signal.

    Strong edges are soft-limited (``DETAIL_LIMIT * tanh``) so a dark frame or brow becomes a mild
    groove rather than a trench, and the signal fades out over the eyes, whose darkness is colour,
    not relief."""
    gray = cv2.cvtColor(texture, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    detail = DETAIL_LIMIT * np.tanh((gray - cv2.GaussianBlur(gray, (0, 0), sigma)) / DETAIL_LIMIT)
    eye_mask = np.zeros(gray.shape, np.float32)
    cv2.fillPoly(eye_mask, [np.round(eye).astype(np.int32) for eye in eyes], 1.0)
    feather = max(1.0, 0.02 * face_width)
    eye_mask = cv2.GaussianBlur(cv2.dilate(eye_mask, np.ones((3, 3), np.uint8), iterations=int(feather)), (0, 0), feather)
    return (detail * (1.0 - np.clip(eye_mask, 0, 1))).astype(np.float32)
