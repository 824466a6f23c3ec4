"""The reconstruction pipeline: image bytes -> per face depth, mesh, UVs, texture and detail map.

Stages (timed individually, each reported through ``report`` before it starts, which is also where a
cancelled or overdue request stops): load -> detect (MTCNN) -> per face: align+crop -> landmarks
(FaceMesh) -> depth (thin-plate fit + rasterised mask) -> [depth network: learned depth fused in, with
``depth_backend`` network] -> mesh (contour + grid Delaunay, spike removal) -> detail. The geometry itself
lives in ``face_geometry`` and ``detail``, free of torch; the network in ``depth``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from addon.wire import options
from addon.wire.protocol import ErrorCode, ProtocolError

from . import __version__, alignment
from . import landmarks as lm
from .config import ReconstructionConfig
from .detail import detail_map
from .depth.backend import DepthNetworks, DepthSettings
from .detection import Detection, FaceDetector
from .face_geometry import FACE_WIDTH_M, FaceGeometry
from .image_loading import load_rgb

# (stage, text, fraction of the request done, face number from 1, faces): may raise ProtocolError(cancelled).
Reporter = Callable[[str, str, float, int, int], None]
FACE_STAGES = (("align", "aligning"), ("landmarks", "locating landmarks"), ("depth", "fitting the surface"),
               ("depth_network", "depth network"), ("mesh", "meshing"), ("detail", "detail map"))
DETECTED_AT = 0.15  # share of a request spent before the per-face stages (load + detect)


def _no_report(stage: str, text: str, fraction: float, face: int, faces: int) -> None:
    """Default reporter: in-process use needs no progress."""


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
    """Seconds per stage name, accumulated over faces."""

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

    def __init__(self, device: torch.device, defaults: ReconstructionConfig = ReconstructionConfig(),
                 depth: DepthSettings = DepthSettings()):
        self.device = device
        self.defaults = defaults
        self.detector = FaceDetector(device)
        self.landmarker = lm.LandmarkModel()
        self.depth_networks = DepthNetworks(device, depth)

    def info(self) -> dict:
        return {"server_version": __version__, "device": str(self.device),
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
                "torch": torch.__version__,
                "models": ["mtcnn (facenet-pytorch)", "face_mesh 478 (mediapipe)"], **self.depth_networks.info()}

    def reconstruct(self, image: bytes | memoryview, params: Mapping | None = None, *,
                    config: ReconstructionConfig | None = None, report: Reporter = _no_report) -> Result:
        """``config`` when the caller validated the options already (the server's I/O thread), else ``params``."""
        config = config or self.defaults.with_params(params or {})
        self.depth_networks.checkpoint(config)  # an uninstalled depth model fails before any work
        timer = Timer()
        report("load", "reading the photo", 0.0, 0, 0)
        with timer.stage("load"):
            rgb = load_rgb(image, config.max_pixels)
        report("detect", "detecting faces", 0.03, 0, 0)
        with timer.stage("detect"):
            detections = self.detector.detect(rgb, config.detect_max_side, config.min_face_score,
                                              config.min_face_fraction)
        chosen = select_faces(detections, config.face)
        faces, skipped = [], []
        for number, (index, detection) in enumerate(chosen):
            def face_report(step: int, _number=number) -> None:
                stage, text = FACE_STAGES[step]
                done = (_number + step / len(FACE_STAGES)) / len(chosen)
                suffix = f" {_number + 1}/{len(chosen)}" if len(chosen) > 1 else ""
                report(stage, text + suffix, DETECTED_AT + (1 - DETECTED_AT) * done, _number + 1, len(chosen))
            face = self._reconstruct_face(rgb, detection, index, config, timer, face_report)
            (faces if face is not None else skipped).append(face or index)
        if not faces:
            raise ProtocolError(ErrorCode.NO_FACE, "a face was detected but its landmarks could not be located; "
                                                   "try a sharper, more frontal photo")
        meta = {"image_size": [int(rgb.shape[1]), int(rgb.shape[0])], "faces_detected": len(detections),
                "skipped_faces": skipped, "timings_ms": timer.as_ms(), "config": options.as_dict(config)}
        return Result(faces=faces, meta=meta)

    def _reconstruct_face(self, rgb, detection: Detection, index: int, config: ReconstructionConfig,
                          timer: Timer, report: Callable[[int], None]) -> FaceResult | None:
        size = config.texture_size
        report(0)
        with timer.stage("align"):
            to_crop = alignment.crop_transform(detection, size, config.crop_margin)
            crop = alignment.warp(rgb, to_crop, size)
        report(1)
        with timer.stage("landmarks"):
            points = self.landmarker.locate(crop)
        if points is None:
            return None
        report(2)
        with timer.stage("depth"):
            geometry = FaceGeometry(points, config)
        depth_meta, detail = {"depth_backend": "landmarks"}, None
        if config.depth_backend == "network":
            report(3)
            with timer.stage("depth_network"):
                depth_meta, detail = self.depth_networks.refine(crop, geometry, config)
        with timer.stage("depth"):
            depth, mask = geometry.depth_map(config.depth_size)
        report(4)
        with timer.stage("mesh"):
            vertices, faces, uvs = geometry.mesh()
        report(5)
        with timer.stage("detail"):
            eyes = [points[list(ring), :2] for ring in lm.EYE_RINGS]
            detail = detail_map(crop, config.detail_sigma, eyes, geometry.pixel_width) if detail is None else detail
        to_image = alignment.invert(to_crop)
        arrays = {
            "vertices": vertices, "faces": faces, "uvs": uvs, "texture": crop, "detail": detail,
            "depth": depth, "mask": mask,
            "landmarks": geometry.landmarks_metres(points),
            "landmarks_image": alignment.apply(to_image, points[:, :2]).astype(np.float32),
        }
        meta = {"index": index, "box": detection.box.round(2).tolist(), "score": round(detection.score, 5),
                "points5": detection.points.round(2).tolist(), "crop_to_image": to_image.tolist(),
                "vertex_count": int(len(vertices)), "triangle_count": int(len(faces)),
                "face_width_m": FACE_WIDTH_M, "mouth_open": geometry.mouth_open,
                "rotation": geometry.rotation.round(6).tolist(), "yaw_deg": round(geometry.yaw_degrees, 2),
                **depth_meta}
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
