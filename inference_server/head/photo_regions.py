"""Which photo pixels show the head's own skin: where the texture may take the photo's colour.

Projecting the photo onto the fitted head paints whatever the camera saw in front of it: the
background beside the neck, a collar, a fringe over the forehead, hair on the skull. ``SkinRegions``
gives a per-pixel weight in [0, 1] that the texture multiplies into its photo weight (the rest of
the head takes the mirror or the skin fill):

- inside the face (FaceMesh's face oval below the brows' top) everything counts: eyes, brows, lips,
  stubble and beards are the likeness;
- elsewhere (forehead above the brows, scalp, ears, neck) a pixel counts when the person segmenter
  says it is the person (MediaPipe's selfie segmentation, which ships in the wheel: the background
  goes) and it looks like the face's skin: chroma (YCrCb) within a few robust deviations of the
  cheeks', not much darker than them, and smooth (local contrast low: hair of any colour is
  textured at the scale of a strand). Hair, collars and most backgrounds fail one of these.

Known limits: very fine or out-of-focus hair of the skin's colour can pass as skin; a beard below the
jaw line is replaced by the neck's skin fill; hands are not detected separately (a hand over the face
counts as face, one over the neck passes where it looks like the skin); a cast shadow under the chin
is kept (it is skin).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..landmarks import FACE_OVAL, native_stderr_muted
from .sampling import sample_bilinear

BROW_TOPS = (105, 66, 107, 334, 296, 336)       # FaceMesh: the upper edge of both brows
CHEEK_PATCHES = ((50, 101, 118, 117, 123, 187, 205), (280, 330, 347, 346, 352, 411, 425))  # below the eyes
NOSE_BRIDGE = (6, 197, 195, 5)
CHROMA_SPREAD = (3.0, 5.0)   # robust deviations of chroma: skin up to the first, none from the second
DARKNESS = (0.45, 0.3)       # luma relative to the face's: skin down to the first, none below the second
TEXTURE_CONTRAST = (0.06, 0.09)  # local luma contrast: skin up to the first, none from the second
TEXTURE_SCALE = 0.01         # its window, in face widths (about a strand of hair)
SEGMENTER_SIDE = 256         # the selfie model's input
EDGE_MARGIN = 0.015          # skin next to something else (hair, a collar) counts from this far in (face widths)


@dataclass(frozen=True)
class PhotoWeight:
    """A weight map over part of the photo: ``values[0, 0]`` covers the pixel at ``origin`` (x, y)."""

    values: np.ndarray            # (h, w) float32 in [0, 1]
    origin: tuple[float, float]

    def at(self, xy: np.ndarray) -> np.ndarray:
        """(N,) weights at photo positions ``xy`` (pixel centres at +0.5); 0 outside the map."""
        return sample_bilinear(self.values, np.asarray(xy, np.float32) - np.float32(self.origin))[:, 0]

    def moved(self, origin: tuple[float, float]) -> "PhotoWeight":
        """The same map for positions measured from ``origin`` (e.g. a crop's corner) instead."""
        return PhotoWeight(self.values, (self.origin[0] - origin[0], self.origin[1] - origin[1]))


class SkinRegions:
    """One MediaPipe selfie segmenter; one instance per thread (the graph is not thread-safe)."""

    def __init__(self):
        with native_stderr_muted():
            import mediapipe as mp

            self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
            self._segmenter.process(np.zeros((SEGMENTER_SIDE, SEGMENTER_SIDE, 3), np.uint8))

    def close(self) -> None:
        self._segmenter.close()

    def weight(self, rgb: np.ndarray, landmarks_px: np.ndarray, head_xy: np.ndarray) -> PhotoWeight:
        """The weight over the head's extent in the photo (``head_xy``: its vertices' photo positions);
        ``landmarks_px`` are FaceMesh's 478 points in photo pixels."""
        height, width = rgb.shape[:2]
        inside = np.isfinite(head_xy).all(axis=1)
        if not inside.any():  # nothing of the head is in front of the camera: nothing to project
            return PhotoWeight(np.zeros((1, 1), np.float32), (0.0, 0.0))
        low = np.clip(np.floor(head_xy[inside].min(axis=0)) - 2, 0, (width - 1, height - 1)).astype(int)
        high = np.clip(np.ceil(head_xy[inside].max(axis=0)) + 2, low + 1, (width, height)).astype(int)
        crop = np.ascontiguousarray(rgb[low[1]:high[1], low[0]:high[0]])
        points = landmarks_px[:, :2] - low
        bare = self._person(crop) * skin_likeness(crop, points)
        margin = max(1, int(EDGE_MARGIN * np.ptp(points[FACE_OVAL, 0])))  # no halo of hair or collar around skin
        bare = cv2.erode(bare, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
        values = np.maximum(face_region(crop.shape[:2], points), bare)
        return PhotoWeight(values.astype(np.float32), (float(low[0]), float(low[1])))

    def _person(self, crop: np.ndarray) -> np.ndarray:
        mask = self._segmenter.process(crop).segmentation_mask
        return np.clip((np.asarray(mask, np.float32) - 0.3) / 0.4, 0.0, 1.0)


def face_region(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """1 inside the face oval below the top of the brows, 0 elsewhere, softened over a few pixels."""
    mask = np.zeros(shape, np.float32)
    cv2.fillPoly(mask, [np.round(points[FACE_OVAL]).astype(np.int32)], 1.0)
    brow_top = points[list(BROW_TOPS), 1].min()
    rows = np.arange(shape[0], dtype=np.float32)[:, None]
    width = np.ptp(points[FACE_OVAL, 0])
    mask *= np.clip((rows - brow_top) / max(1.0, 0.05 * width) + 0.5, 0.0, 1.0)
    return cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.01 * width))


def skin_likeness(crop: np.ndarray, points: np.ndarray) -> np.ndarray:
    """How much each pixel's colour is the face's skin, from the cheeks and nose bridge (robust
    median and spread of Cr, Cb; median luma)."""
    ycrcb = cv2.cvtColor(crop, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    sample = np.zeros(crop.shape[:2], np.uint8)
    for patch in CHEEK_PATCHES:
        cv2.fillConvexPoly(sample, cv2.convexHull(np.round(points[list(patch)]).astype(np.int32)), 1)
    cv2.polylines(sample, [np.round(points[list(NOSE_BRIDGE)]).astype(np.int32)], False, 1,
                  max(1, int(0.02 * np.ptp(points[FACE_OVAL, 0]))))
    values = ycrcb[sample > 0]
    if len(values) < 20:  # too small a face to learn its skin from: colour does not decide
        return np.ones(crop.shape[:2], np.float32)
    values = values[values[:, 0] >= np.median(values[:, 0])]  # the better-exposed half: shadows' chroma is noise
    median = np.median(values, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(values - median), axis=0), 2.0)
    chroma = np.abs(ycrcb[..., 1:] - median[1:]) / spread[1:]
    low, high = CHROMA_SPREAD
    by_chroma = np.clip((high - chroma.max(axis=-1)) / (high - low), 0.0, 1.0)
    light, dark = DARKNESS
    by_luma = np.clip((ycrcb[..., 0] / max(median[0], 1.0) - dark) / (light - dark), 0.0, 1.0)
    smooth, rough = TEXTURE_CONTRAST
    contrast = local_contrast(ycrcb[..., 0], TEXTURE_SCALE * np.ptp(points[FACE_OVAL, 0]))
    by_texture = np.clip((rough - contrast) / (rough - smooth), 0.0, 1.0)
    return by_chroma * by_luma * by_texture


def local_contrast(luma: np.ndarray, sigma: float) -> np.ndarray:
    """Local standard deviation over mean of the luma (Gaussian window ``sigma`` pixels): skin is
    smooth at the scale of a hair strand, hair is not, whatever its colour."""
    sigma = max(1.0, sigma)
    mean = cv2.GaussianBlur(luma, (0, 0), sigma)
    variance = np.maximum(cv2.GaussianBlur(luma * luma, (0, 0), sigma) - mean * mean, 0.0)
    return np.sqrt(variance) / np.maximum(mean, 1.0)
