"""The reconstruction pipeline: image bytes -> per face depth, mesh, UVs, texture and detail map.

Stages (timed individually, each reported through ``report`` before it starts, which is also where a
cancelled or overdue request stops): load -> detect (MTCNN) -> per face: align+crop -> landmarks
(FaceMesh) -> depth (thin-plate fit + rasterised mask) -> [depth network: learned depth fused in, with
``depth_backend`` network] -> mesh (contour + grid Delaunay, spike removal) -> detail. The geometry itself
lives in ``face_geometry`` and ``detail``, free of torch; the network in ``depth``.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from addon.wire import options
from addon.wire.protocol import ErrorCode, ProtocolError

from . import __version__, alignment
from . import landmarks as lm
from .config import ReconstructionConfig, request_geometry
from .detail import detail_map
from .depth.backend import DepthNetworks, DepthSettings
from .detection import Detection, FaceDetector
from .face_geometry import FACE_WIDTH_M, FaceGeometry
from .image_loading import exif_focal_px, load_rgb
from .limits import check_photo_count


class UnusableHeadModel(ProtocolError):
    """The installed head model fails its checks at load (``no_model``: installing it again mends it)."""


# (stage, text, fraction of the request done, face number from 1, faces): may raise ProtocolError(cancelled).
Reporter = Callable[[str, str, float, int, int], None]
# A face's stages in order, per geometry: where the progress bar stands when each begins.
STAGES = {"face": ("align", "landmarks", "depth", "depth_network", "mesh", "detail"),
          "head": ("align", "landmarks", "cues", "fit", "refine", "texture", "depth")}
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


class FaceProgress:
    """Times one face's stages and reports each as it begins: ``progress(stage, text)`` closes the
    previous stage. The report is also where a cancelled or overdue request stops."""

    def __init__(self, timer: "Timer", report: Reporter, number: int, count: int, stages: tuple):
        self.timer, self.report, self.number, self.count, self.stages = timer, report, number, count, stages
        self._current: tuple[str, float] | None = None

    def __call__(self, stage: str, text: str) -> None:
        self.close()
        done = (self.number + self.stages.index(stage) / len(self.stages)) / self.count
        suffix = f" {self.number + 1}/{self.count}" if self.count > 1 else ""
        self.report(stage, text + suffix, DETECTED_AT + (1 - DETECTED_AT) * done, self.number + 1, self.count)
        self._current = (stage, time.perf_counter())

    def close(self) -> None:
        if self._current is not None:
            stage, started = self._current
            self.timer.seconds[stage] = self.timer.seconds.get(stage, 0.0) + time.perf_counter() - started
            self._current = None


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
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise RuntimeError(f"--device {name} was requested but torch sees {count or 'no'} CUDA GPU"
                               f"{'s' if count != 1 else ''}")
    return device


class FacePipeline:
    """Holds the models; ``reconstruct`` is called from one worker thread at a time."""

    def __init__(self, device: torch.device, defaults: ReconstructionConfig = ReconstructionConfig(),
                 head_model: Path | None = None, depth: DepthSettings = DepthSettings()):
        """``head_model``: an installed ICT-FaceKit file (``head.store.find_model()``); None = face mode only.
        ``depth``: the depth networks' server-wide settings (``depth_backend`` network)."""
        self.device = device
        self.defaults = defaults
        self.detector = FaceDetector(device)
        self.landmarker = lm.LandmarkModel()
        self.depth_networks = DepthNetworks(device, depth)
        self.head = None
        if head_model is not None:
            from .head.model import HeadModel, ModelFileError
            from .head.reconstruct import HeadReconstructor

            try:
                model = HeadModel.load(head_model)
            except ModelFileError as exc:
                raise UnusableHeadModel(ErrorCode.NO_MODEL, f"the installed head model is unusable ({exc}): install "
                                                            "it again (`python -m inference_server model fetch`)") from None
            cues = load_cues(model, device)
            self.head = HeadReconstructor(model, device, cues=cues)
            if cues is not None:
                self.depth_networks.share_cues(cues.path, cues.network)

    def info(self) -> dict:
        models = ["mtcnn (facenet-pytorch)", "face_mesh 478 (mediapipe)"]
        return {"server_version": __version__, "device": str(self.device),
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU",
                "torch": torch.__version__, "threads": torch.get_num_threads(), "geometries": ["head", "face"] if self.head else ["face"],
                "models": models + (["ict-facekit head model"] if self.head else [])
                + (["cues network (faceforge)"] if self.head and self.head.cues else []), **self.depth_networks.info()}

    def head_model_arrays(self) -> tuple[str, dict] | None:
        """(fingerprint, arrays) that every head of the loaded model shares; None without a head model."""
        return None if self.head is None else (self.head.model_fingerprint, self.head.model_arrays)

    def whole_arrays(self, face) -> dict:
        """A result face's arrays joined with the model's shared ones, as a client's ``reconstruction`` has them."""
        if face.meta.get("model_fingerprint") is None:
            return face.arrays
        return {**self.head.model_arrays, **face.arrays}

    def reconstruct(self, image: bytes | memoryview | Sequence, params: Mapping | None = None, *,
                    config: ReconstructionConfig | None = None, report: Reporter = _no_report) -> Result:
        """``config`` when the caller validated the options already (the server's I/O thread), else ``params``.
        ``image``: one photo's bytes, or a list of photos of one person (one head fitted to all of them)."""
        config = config or self.defaults.with_params(params or {})
        geometry = request_geometry(config, self.head is not None)
        if not isinstance(image, (bytes, bytearray, memoryview)):
            photos = list(image)
            check_photo_count(len(photos), config, geometry == "head")
            if len(photos) > 1:
                return self._reconstruct_person(photos, config, report)
            image = photos[0]
        if geometry == "face":
            self.depth_networks.checkpoint(config)  # an uninstalled depth model fails before any work
        timer = Timer()
        report("load", "reading the photo", 0.0, 0, 0)
        with timer.stage("load"):
            rgb = load_rgb(image, config.max_pixels)
            focal = exif_focal_px(image, rgb.shape[:2]) if geometry == "head" else None
        report("detect", "detecting faces", 0.03, 0, 0)
        with timer.stage("detect"):
            detections = self.detector.detect(rgb, config.detect_max_side, config.min_face_score,
                                              config.min_face_fraction)
        chosen = select_faces(detections, config.face)
        faces, skipped = [], []
        for number, (index, detection) in enumerate(chosen):
            progress = FaceProgress(timer, report, number, len(chosen), STAGES[geometry])
            try:
                face = self._reconstruct_face(rgb, detection, index, config, geometry, progress, focal)
            finally:
                progress.close()
            (faces if face is not None else skipped).append(face or index)
        if not faces:
            raise ProtocolError(ErrorCode.NO_FACE, "a face was detected but its landmarks could not be located; "
                                                   "try a sharper, more frontal photo")
        meta = {"image_size": [int(rgb.shape[1]), int(rgb.shape[0])], "faces_detected": len(detections),
                "skipped_faces": skipped, "timings_ms": timer.as_ms(), "config": options.as_dict(config)}
        return Result(faces=faces, meta=meta)

    def _reconstruct_person(self, photos: list, config: ReconstructionConfig, report: Reporter) -> Result:
        """Several photos of one person -> one head: each photo's chosen face located (errors name the
        photo), copies of another photo left out (``head.copies``), then ``HeadReconstructor.reconstruct_views``."""
        from .head.copies import face_signature, find_copies
        from .head.reconstruct import PersonPhoto
        from .head.same_person import NotOnePerson

        timer, found, count = Timer(), [], len(photos)
        for number, image in enumerate(photos, 1):
            report("load", f"reading photo {number}/{count}", DETECTED_AT * (number - 1) / count, 0, 0)
            with _naming_the_photo(number, count), timer.stage("load"):
                rgb = load_rgb(image, config.max_pixels)
                focal = exif_focal_px(image, rgb.shape[:2])
            report("detect", f"finding the face in photo {number}/{count}", DETECTED_AT * (number - 0.5) / count, 0, 0)
            with _naming_the_photo(number, count):
                with timer.stage("detect"):
                    detections = self.detector.detect(rgb, config.detect_max_side, config.min_face_score,
                                                      config.min_face_fraction)
                ((index, detection),) = select_faces(detections, config.face)
                with timer.stage("align"):
                    to_crop = alignment.crop_transform(detection, config.texture_size, config.crop_margin)
                    crop = alignment.warp(rgb, to_crop, config.texture_size)
                with timer.stage("landmarks"):
                    points = self.landmarker.locate(crop)
                if points is None:
                    raise ProtocolError(ErrorCode.NO_FACE, "a face was detected but its landmarks could not be "
                                                           "located; try a sharper, more frontal photo")
            found.append((PersonPhoto(rgb, points, to_crop, focal), index, detection, len(detections)))
        # A copy of another photo (cropped, rotated, re-encoded, mirrored) adds no view: left out, and said.
        copies = find_copies([face_signature(photo.rgb, photo.to_crop, config.texture_size) for photo, *_ in found])
        kept = [n for n in range(count) if n not in {copy.photo for copy in copies}]
        progress = FaceProgress(timer, report, 0, 1, STAGES["head"][2:])
        try:
            if len(kept) == 1:  # one distinct photo: the single-photo head, refinement and all
                photo = found[0][0]
                arrays, meta = self.head.reconstruct(photo.rgb, photo.points_crop, photo.to_crop, config, progress,
                                                     focal_px=photo.focal_px)
            else:
                try:
                    arrays, meta = self.head.reconstruct_views([found[n][0] for n in kept], config, progress)
                except NotOnePerson as odd:
                    raise ProtocolError(odd.code, f"photo {kept[odd.photo] + 1} of {count}: {odd.message}") from None
                for entry, number in zip(meta["photos"], kept):
                    entry["photo"] = number + 1
        finally:
            progress.close()
        if copies:
            meta["copies"] = [{"photo": copy.photo + 1, "copy_of": copy.of + 1, "mirrored": copy.mirrored,
                               "similarity": copy.similarity} for copy in copies]
        first, index, detection, detected = found[0]
        meta = {"index": index, "box": detection.box.round(2).tolist(), "score": round(detection.score, 5),
                "points5": detection.points.round(2).tolist(),
                "crop_to_image": alignment.invert(first.to_crop).tolist(), **meta}
        result_meta = {"image_size": [int(first.rgb.shape[1]), int(first.rgb.shape[0])], "faces_detected": detected,
                       "skipped_faces": [], "photos": count, "timings_ms": timer.as_ms(),
                       "config": options.as_dict(config)}
        return Result(faces=[FaceResult(index=index, meta=meta, arrays=arrays)], meta=result_meta)

    def _reconstruct_face(self, rgb, detection: Detection, index: int, config: ReconstructionConfig,
                          geometry: str, progress: FaceProgress, focal: float | None = None) -> FaceResult | None:
        size = config.texture_size
        progress("align", "aligning")
        to_crop = alignment.crop_transform(detection, size, config.crop_margin)
        crop = alignment.warp(rgb, to_crop, size)
        progress("landmarks", "locating landmarks")
        points = self.landmarker.locate(crop)
        if points is None:
            return None
        if geometry == "head":
            arrays, meta = self.head.reconstruct(rgb, points, to_crop, config, progress, focal_px=focal)
        else:
            arrays, meta = face_arrays(crop, points, to_crop, config, progress, self.depth_networks)
        meta = {"index": index, "box": detection.box.round(2).tolist(), "score": round(detection.score, 5),
                "points5": detection.points.round(2).tolist(),
                "crop_to_image": alignment.invert(to_crop).tolist(), **meta}
        return FaceResult(index=index, meta=meta, arrays=arrays)


@contextmanager
def _naming_the_photo(number: int, count: int):
    """A photo's own error (unreadable, no face ...) says which of the request's photos it is."""
    try:
        yield
    except ProtocolError as err:
        raise ProtocolError(err.code, f"photo {number} of {count}: {err.message}") from None


def face_arrays(crop: np.ndarray, points: np.ndarray, to_crop: np.ndarray, config: ReconstructionConfig,
                progress: Callable[[str, str], None], networks: DepthNetworks) -> tuple[dict, dict]:
    """Face mode: the model-free surface through the landmarks (fused with a depth network's with
    ``depth_backend`` network or cues), meshed, with the crop as texture."""
    progress("depth", "fitting the surface")
    geometry = FaceGeometry(points, config)
    depth_meta, detail = {"depth_backend": "landmarks"}, None
    if config.depth_backend in ("network", "cues"):
        progress("depth_network", "depth network")
        depth_meta, detail = networks.fuse(crop, points, geometry, config)
    depth, mask = geometry.depth_map(config.depth_size)
    progress("mesh", "meshing")
    vertices, faces, uvs = geometry.mesh()
    progress("detail", "detail map")
    if detail is None:
        eyes = [points[list(ring), :2] for ring in lm.EYE_RINGS]
        detail = detail_map(crop, config.detail_sigma, eyes, geometry.pixel_width)
    arrays = {
        "vertices": vertices, "faces": faces, "uvs": uvs, "texture": crop, "detail": detail,
        "depth": depth, "mask": mask, "landmarks": geometry.landmarks_metres(points),
        "landmarks_image": alignment.apply(alignment.invert(to_crop), points[:, :2]).astype(np.float32),
    }
    meta = {"geometry": "face", "vertex_count": int(len(vertices)), "triangle_count": int(len(faces)),
            "face_width_m": FACE_WIDTH_M, "mouth_open": geometry.mouth_open,
            "rotation": geometry.rotation.round(6).tolist(), "yaw_deg": round(geometry.yaw_degrees, 2), **depth_meta}
    return arrays, meta


def load_cues(model, device: torch.device):
    """The cues network for head mode's ``shape_cues network`` (installed, else shipped weights), or
    None with a warning: a missing or damaged checkpoint costs that choice, never head mode itself."""
    from .cues import checkpoint
    from .cues.predict import CuesPredictor

    path = checkpoint.find()
    try:
        return CuesPredictor.load(path, model, device)
    except checkpoint.CheckpointError as exc:
        logging.getLogger("faceforge.pipeline").warning("shape_cues network is unavailable: %s", exc)
        return None


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
