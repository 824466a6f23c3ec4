"""FaceMesh landmarks in the photo's own pixels: detection -> aligned crop -> FaceMesh -> back.

The head fit works in the photo's camera, so the crop's similarity transform is undone for x, y and
MediaPipe's relative depth is rescaled by the same factor (it is in crop pixels).
"""
from __future__ import annotations

import math

import numpy as np

from .. import alignment
from ..config import ReconstructionConfig
from ..detection import Detection, FaceDetector
from ..landmarks import LandmarkModel


def crop_to_photo(points: np.ndarray, to_crop: np.ndarray) -> np.ndarray:
    """(478, 3) crop pixels (z larger = nearer) -> photo pixels, z scaled like x and y."""
    scale = math.hypot(to_crop[0, 0], to_crop[1, 0])
    xy = alignment.apply(alignment.invert(to_crop), points[:, :2])
    return np.column_stack([xy, points[:, 2] / scale])


def locate_face(rgb: np.ndarray, detection: Detection, landmarker: LandmarkModel,
                config: ReconstructionConfig = ReconstructionConfig()) -> np.ndarray | None:
    """(478, 3) float64 landmarks of one detected face in photo pixels, or None if FaceMesh fails."""
    to_crop = alignment.crop_transform(detection, config.texture_size, config.crop_margin)
    points = landmarker.locate(alignment.warp(rgb, to_crop, config.texture_size))
    return None if points is None else crop_to_photo(points, to_crop)


def locate_all(rgb: np.ndarray, detector: FaceDetector, landmarker: LandmarkModel,
               config: ReconstructionConfig = ReconstructionConfig()) -> list[np.ndarray]:
    """Landmarks of every face found (largest first); faces FaceMesh cannot read are left out."""
    detections = detector.detect(rgb, config.detect_max_side, config.min_face_score, config.min_face_fraction)
    found = (locate_face(rgb, detection, landmarker, config) for detection in detections)
    return [points for points in found if points is not None]
