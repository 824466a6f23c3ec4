"""Roll-aligned square crop around a detected face (the MTCNN align+crop step)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .detection import Detection


def crop_transform(face: Detection, size: int, margin: float) -> np.ndarray:
    """2x3 affine taking source pixels to crop pixels: eye line horizontal, face centred, ``margin`` of
    the box size added on every side."""
    left_eye, right_eye = face.points[0], face.points[1]
    roll = math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
    scale = size / (face.size * (1 + 2 * margin))
    cos, sin = math.cos(-roll) * scale, math.sin(-roll) * scale
    rotation = np.array([[cos, -sin], [sin, cos]])
    offset = np.array([size / 2, size / 2]) - rotation @ centre
    return np.hstack([rotation, offset[:, None]])


def invert(transform: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(transform)


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]


def warp(rgb: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    """Resample the crop. Large reductions go through an area-averaged pre-shrink to avoid aliasing."""
    scale = math.hypot(transform[0, 0], transform[1, 0])
    shrink = int(1 / scale) if scale < 0.5 else 1
    if shrink > 1:
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (max(1, w // shrink), max(1, h // shrink)), interpolation=cv2.INTER_AREA)
        transform = transform.copy()
        transform[:, :2] *= (w / rgb.shape[1])
    return cv2.warpAffine(rgb, transform, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
