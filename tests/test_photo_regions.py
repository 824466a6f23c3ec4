"""Which photo pixels count as the head's own skin (``photo_regions``), on a drawn image with known
regions: skin, dark hair, blond hair of the skin's own colour, a white collar. The person
segmenter (MediaPipe) is exercised by the live-server texture tests; these check the colour,
darkness and texture rules and the face region on their own."""
from __future__ import annotations

import numpy as np

from inference_server.head.photo_regions import BROW_TOPS, CHEEK_PATCHES, face_region, skin_likeness
from inference_server.landmarks import FACE_OVAL

SKIN, HAIR, BLOND, COLLAR = (205, 160, 135), (45, 32, 25), (200, 158, 130), (235, 235, 238)


def drawn_photo() -> tuple[np.ndarray, np.ndarray]:
    """200 x 300 RGB: skin on the left half, dark hair, blond hair in strands, a white collar;
    FaceMesh-like points: a face oval 100 px wide on the skin, cheeks inside it."""
    rng = np.random.default_rng(0)
    rgb = np.zeros((200, 300, 3), np.float32)
    rgb[:, :150] = SKIN
    rgb[:, 150:200] = HAIR
    stripes = (np.arange(200)[None, :] % 6 < 3)[:, :50]  # strands 3 px wide, light and shadow
    rgb[:, 200:250] = np.where(stripes[..., None], BLOND, np.array(BLOND) * 0.55)
    rgb[:, 250:] = COLLAR
    rgb += rng.normal(0, 2.0, rgb.shape)  # sensor noise: skin stays smooth at strand scale
    points = np.tile([75.0, 120.0, 0.0], (478, 1))
    angles = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    points[FACE_OVAL, 0] = 75 + 50 * np.cos(angles)
    points[FACE_OVAL, 1] = 100 + 70 * np.sin(angles)
    for patch, centre in zip(CHEEK_PATCHES, (55, 95)):
        ring = np.linspace(0, 2 * np.pi, len(patch), endpoint=False)
        points[list(patch), 0] = centre + 8 * np.cos(ring)
        points[list(patch), 1] = 115 + 8 * np.sin(ring)
    points[list(BROW_TOPS), 1] = 80.0
    return np.clip(rgb, 0, 255).astype(np.uint8), points[:, :2]


def test_skin_counts_and_hair_collar_do_not():
    rgb, points = drawn_photo()
    likeness = skin_likeness(rgb, points)
    median = {name: float(np.median(likeness[20:180, cols])) for name, cols in
              (("skin", slice(10, 140)), ("dark hair", slice(160, 190)), ("blond hair", slice(210, 240)),
               ("collar", slice(260, 290)))}
    assert median["skin"] > 0.9, median
    assert median["dark hair"] < 0.05 and median["collar"] < 0.05, median
    assert median["blond hair"] < 0.2, median  # its colour is the skin's; its texture is not


def test_face_region_is_the_oval_below_the_brows():
    rgb, points = drawn_photo()
    region = face_region(rgb.shape[:2], points)
    assert region[130, 75] > 0.99 and region[100, 75] > 0.99   # mid-face and just below the brows
    assert region[60, 75] < 0.01                                 # forehead above the brows: the skin rules decide
    assert region[100, 140] < 0.01 and region[190, 75] < 0.01    # outside the oval
