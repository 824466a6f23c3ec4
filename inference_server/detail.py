"""The detail map ("detail filling"): high-frequency luminance aligned with the texture, for a Displace modifier."""
from __future__ import annotations

import cv2
import numpy as np

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
