"""Photos of one person that are one photo: a crop, rescale, rotation, re-encoding or mirror image of
another adds no view of the head (a mirror image even adds a false one: the other side of a face is
not its mirror), so the joint fit must not count it as one.

Each photo's face is resampled into the same aligned crop the pipeline uses (eye line level, face
centred, the detector's margin of surroundings) at a small size, and compared with every earlier
photo's, as it is and mirrored, by normalised cross-correlation of the grey levels. A copy matches
its original closely, surroundings included; another photo of the same person differs in pose,
expression, light or background (see ``COPY_SIMILARITY``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .. import alignment

SIDE = 64
BLUR = 1.5  # pixels at SIDE: two detections of one face place their crops a little apart
INNER = (0.18, 0.82)  # the face itself: the crop's margin shows surroundings a rotation or crop moves
# Measured: copies of the astronaut (cropped, rescaled, rotated 15 deg, JPEG at quality 30, relit
# from one side, mirrored) correlate 0.93-0.995 with her; renders of one head turned 10 / 20 / 30 deg
# 0.87 / 0.78 / 0.73, two different rendered heads (same paint, same light) 0.86, the astronaut and
# Grace Hopper 0.53. Real photos of one person taken apart differ more than renders do.
COPY_SIMILARITY = 0.90


@dataclass(frozen=True)
class Copy:
    photo: int        # 0-based index of the photo that repeats an earlier one
    of: int           # the earlier photo it repeats
    mirrored: bool
    similarity: float


def face_signature(rgb: np.ndarray, to_crop: np.ndarray, crop_size: int) -> np.ndarray:
    """The aligned face crop at ``SIDE`` pixels, grey, zero mean and unit norm."""
    small = np.asarray(to_crop, np.float64) * (SIDE / crop_size)
    grey = cv2.cvtColor(alignment.warp(rgb, small, SIDE), cv2.COLOR_RGB2GRAY).astype(np.float64)
    inner = slice(int(INNER[0] * SIDE), int(INNER[1] * SIDE))
    grey = cv2.GaussianBlur(grey, (0, 0), BLUR)[inner, inner]  # a few pixels of alignment difference
    grey -= grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-9)


def find_copies(signatures: list[np.ndarray], threshold: float = COPY_SIMILARITY) -> list[Copy]:
    """Which photos repeat an earlier one that is itself not a copy (the first wins)."""
    copies, originals = [], []
    for index, signature in enumerate(signatures):
        best = None
        for earlier in originals:
            for mirrored, candidate in ((False, signature), (True, signature[:, ::-1])):
                score = float((signatures[earlier] * candidate).sum())
                if score >= threshold and (best is None or score > best.similarity):
                    best = Copy(index, earlier, mirrored, round(score, 4))
        if best is None:
            originals.append(index)
        else:
            copies.append(best)
    return copies
