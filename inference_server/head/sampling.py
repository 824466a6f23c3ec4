"""Bilinear samples of an image at float pixel positions: what the texture, the photo's skin weight and
the photometric refinement all read photos and maps with (one OpenCV remap, any channel count)."""
from __future__ import annotations

import cv2
import numpy as np


def sample_bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, channels) bilinear samples of ``image`` at pixel positions ``xy`` (x = column, pixel centres
    at +0.5); NaN or far-outside positions give 0."""
    n, width = len(xy), 1024
    rows = -(-n // width)
    maps = np.full((rows * width, 2), -1e6, np.float32)  # far outside: BORDER_CONSTANT zero
    np.subtract(xy, 0.5, out=maps[:n], casting="unsafe")  # pixel centres at +0.5 -> OpenCV's integer grid
    maps[~np.isfinite(maps).all(axis=1)] = -1e6
    out = cv2.remap(image, maps.reshape(rows, width, 2), None, cv2.INTER_LINEAR,  # one two-channel map
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(rows * width, -1)[:n]
