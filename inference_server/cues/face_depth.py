"""The cues network as face mode's third geometry source (``depth_backend`` cues).

The network's nearness map, run on the face crop and resampled onto the crop's pixel grid, is fused
into the landmark surface by ``depth.face_fusion`` like a depth network's output. Nearness is
proportional to height (the network is trained on a weak-perspective scale), so the fusion is affine
in height (``camera_distance`` infinite). The network sees the face at 128 px: it knows the face's
mid-scale shape (nose, cheekbones, brow, chin), not its pores, so the landmark surface keeps only
the broad shape (``lowpass_fraction``) and the photo's detail map stays. It is the project's own
network: shipped, offline, no head model needed.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from .. import alignment
from ..depth.fuse import FuseConfig
from .crop import INPUT_SIDE, OUTPUT_STRIDE, crop_transform
from .predict import run_network

# The landmark surface keeps what varies more slowly than 12 % of the face width (Gaussian sigma);
# above it the network's shape replaces it. Chosen on benchmarks/ict_eval.py (see the README).
FUSE = FuseConfig(lowpass_fraction=0.12, camera_distance=math.inf)


def nearness_on_crop(network, crop: np.ndarray, points: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 nearness (larger = nearer, arbitrary scale and zero) on the face crop's pixels,
    and the network's confidence in it there: its predicted Laplace scale's median over the head
    divided by the scale, at most 1 (pixels it is less sure of than usual count for less).

    ``points``: the crop's FaceMesh landmarks (crop pixels), which frame the network's own crop
    exactly as in head mode. Mirror-averaged, so a mirrored photo gets the mirrored surface."""
    to_cues = crop_transform(points[:, :2])
    dense, _ = run_network(network, alignment.warp(np.ascontiguousarray(crop[..., :3]), to_cues, INPUT_SIDE),
                           device, mirror_average=True)
    head = dense[6] > 0
    log_scale = dense[4] - (np.median(dense[4][head]) if head.any() else 0.0)
    confidence = np.minimum(np.exp(-log_scale), 1.0).astype(np.float32)
    # Crop pixel p lands at cues-crop point to_cues(p); map cell j's centre is at (j + 0.5) * stride.
    to_map = to_cues / OUTPUT_STRIDE
    to_map[:, 2] -= 0.5
    return tuple(cv2.warpAffine(channel, to_map, (crop.shape[1], crop.shape[0]),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
                 for channel in (dense[0], confidence))
