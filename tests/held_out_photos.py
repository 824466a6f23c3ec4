"""Real photos with the defects texture tests need, made from a photo and its FaceMesh landmarks.

Shared by the tests and ``benchmarks/texture_views.py`` (which renders them): a light from one side,
and things in front of the head that are not its skin.
"""
from __future__ import annotations

import numpy as np


def side_lit(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The far cheek 30x darker than the near one: a light ramp across the face's width."""
    x0, x1 = sorted((landmarks[234, 0], landmarks[454, 0]))
    ramp = np.clip((np.arange(rgb.shape[1]) - x0) / (x1 - x0), 0, 1)[None, :, None]
    return np.clip(rgb * 30.0 ** -ramp, 0, 255).astype(np.uint8)


def occluded(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A dark fringe over the forehead and hair line and a skin-toned patch over the chin (a hand's
    colour, not its shape), both with soft edges."""
    import cv2

    out = rgb.astype(np.float32)
    face_w = np.ptp(landmarks[:, 0])
    chin, brow = landmarks[152], landmarks[10]
    hand = np.zeros(rgb.shape[:2], np.float32)
    cv2.ellipse(hand, (int(chin[0] + 0.15 * face_w), int(chin[1] + 0.05 * face_w)),
                (int(0.45 * face_w), int(0.2 * face_w)), -15, 0, 360, 1.0, -1)
    hair = np.zeros(rgb.shape[:2], np.float32)
    for k in range(9):  # strands of a fringe
        x = int(brow[0] + (k - 4) * 0.1 * face_w)
        cv2.line(hair, (x, int(brow[1] - 0.3 * face_w)), (x + int(0.05 * face_w), int(brow[1] + 0.12 * face_w)),
                 1.0, int(0.07 * face_w))
    for mask, colour in ((hand, (214, 160, 130)), (hair, (40, 28, 20))):
        soft = cv2.GaussianBlur(mask, (0, 0), 0.01 * face_w + 1)[..., None]
        out = out * (1 - soft) + np.asarray(colour, np.float32) * soft
    return np.clip(out, 0, 255).astype(np.uint8)
