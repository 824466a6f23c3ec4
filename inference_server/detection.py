"""Face detection with MTCNN (facenet-pytorch; its P/R/O-Net weights ship inside the wheel)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class Detection:
    box: np.ndarray     # (4,) float64 x0, y0, x1, y1 in source pixels
    score: float
    points: np.ndarray  # (5, 2) float64: eye (image left), eye (image right), nose, mouth left, mouth right

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class FaceDetector:
    """Every face with box, score and 5 landmarks, largest first."""

    def __init__(self, device: torch.device):
        from facenet_pytorch import MTCNN  # heavy import kept out of module import time

        self.device = device
        self._mtcnn = MTCNN(keep_all=True, device=device, post_process=False)

    def detect(self, rgb: np.ndarray, max_side: int, min_score: float, min_face_fraction: float) -> list[Detection]:
        height, width = rgb.shape[:2]
        scale = min(1.0, max_side / max(height, width))
        small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                                                    interpolation=cv2.INTER_AREA)
        # MTCNN's image pyramid starts at 12 / min_face_size: the smallest face sets the cost.
        self._mtcnn.min_face_size = max(12, round(min_face_fraction * max(small.shape[:2])))
        if min(small.shape[:2]) < self._mtcnn.min_face_size:  # a sliver: no face fits (and MTCNN would fail)
            return []
        with torch.inference_mode():
            boxes, scores, points = self._mtcnn.detect(small, landmarks=True)
        if boxes is None:
            return []
        # numpy 1.x + facenet-pytorch can hand back object arrays: cast explicitly.
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2) / scale
        faces = [Detection(b, float(s), p) for b, s, p in zip(boxes, scores, points) if s >= min_score]
        return sorted(faces, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
