"""One face followed through a video's frames: FaceMesh on a crop placed where the face was in the
previous frame, and the detector (MTCNN) only at the start and when FaceMesh loses the face.

The crop a tracked frame gets imitates the detector's: on every detection the tracker measures how
the detector's box sits around FaceMesh's points (size ratio and offset of centres), and frames that
follow place the same box around the previous frame's points. So FaceMesh sees the face as it does
in a single photo, at a fraction of the detector's cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .. import alignment
from ..detection import Detection, FaceDetector
from ..landmarks import SURFACE_LANDMARKS, LandmarkModel, eye_centres
from ..head.photo_landmarks import crop_to_photo

MAX_JUMP = 0.5   # a face that moved more than this many box sizes since the last frame is looked for anew


@dataclass(frozen=True)
class Located:
    points_crop: np.ndarray    # (478, 3) FaceMesh in the crop's pixels
    to_crop: np.ndarray        # (2, 3) photo -> crop
    landmarks_px: np.ndarray   # (478, 3) in the photo's pixels (z: relative depth, same units)
    detected: bool             # found by the detector this frame (not carried over from the last)
    sharpness: float           # variance of the crop's Laplacian: higher is sharper


class FaceTracker:
    """``locate(rgb)`` per frame in order; ``face`` chooses among faces at a (re-)detection when there
    is no previous position (0 = largest), else the detected face nearest the last position wins."""

    def __init__(self, detector: FaceDetector, landmarker: LandmarkModel, config, face: int = 0):
        self.detector, self.landmarker, self.config, self.face = detector, landmarker, config, face
        self._last: np.ndarray | None = None           # previous frame's landmarks in photo pixels
        self._box_shape: tuple[float, np.ndarray] = (1.0, np.zeros(2))  # box size / point extent, centre offset

    def reset(self) -> None:
        self._last = None

    def locate(self, rgb: np.ndarray) -> Located | None:
        found = self._from_last(rgb) if self._last is not None else None
        if found is None:
            found = self._from_detector(rgb)
        self._last = None if found is None else found.landmarks_px
        return found

    def _from_last(self, rgb: np.ndarray) -> Located | None:
        located = self._read(rgb, self._detection_around(self._last), detected=False)
        if located is None:
            return None
        previous, current = _extent(self._last), _extent(located.landmarks_px)
        moved = np.linalg.norm(previous[0] - current[0]) / max(previous[1], 1.0)
        return located if moved < MAX_JUMP and 0.5 < current[1] / max(previous[1], 1.0) < 2.0 else None

    def _from_detector(self, rgb: np.ndarray) -> Located | None:
        detections = self.detector.detect(rgb, self.config.detect_max_side, self.config.min_face_score,
                                          self.config.min_face_fraction)
        if not detections:
            return None
        if self._last is not None:
            centre = _extent(self._last)[0]
            detection = min(detections, key=lambda d: np.linalg.norm((d.box[:2] + d.box[2:]) / 2 - centre))
        elif self.face < len(detections):
            detection = detections[self.face]
        else:
            return None
        located = self._read(rgb, detection, detected=True)
        if located is not None:
            centre, extent = _extent(located.landmarks_px)
            box_centre = (detection.box[:2] + detection.box[2:]) / 2
            self._box_shape = (detection.size / extent, (box_centre - centre) / extent)
        return located

    def _detection_around(self, landmarks_px: np.ndarray) -> Detection:
        """A detector-like box and eye points around last frame's landmarks."""
        centre, extent = _extent(landmarks_px)
        ratio, offset = self._box_shape
        half = ratio * extent / 2
        middle = centre + offset * extent
        # image left first, as the detector gives them
        eyes = sorted(eye_centres(landmarks_px), key=lambda point: point[0])
        points = np.array([eyes[0], eyes[1], middle, middle, middle])
        return Detection(np.array([middle[0] - half, middle[1] - half, middle[0] + half, middle[1] + half]), 1.0, points)

    def _read(self, rgb: np.ndarray, detection: Detection, detected: bool) -> Located | None:
        size = self.config.texture_size
        to_crop = alignment.crop_transform(detection, size, self.config.crop_margin)
        crop = alignment.warp(rgb, to_crop, size)
        points = self.landmarker.locate(crop)
        if points is None:
            return None
        grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        sharpness = float(cv2.Laplacian(grey, cv2.CV_32F).var())
        return Located(points, to_crop, crop_to_photo(points, to_crop), detected, sharpness)


def _extent(landmarks_px: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and largest side of the bounding box of the face's surface points."""
    surface = landmarks_px[:SURFACE_LANDMARKS, :2]
    low, high = surface.min(0), surface.max(0)
    return (low + high) / 2, float(max(high - low))
