"""Metric prior + learned relative depth -> one depth map: the prior's shape, the network's detail.

The network predicts relative *inverse* depth d = a / z + b with unknown a > 0 and b (MiDaS and
Depth Anything are trained scale-and-shift invariant in that space). The prior is a metric height
field h (metres in front of the face's deepest point, larger = nearer), so the camera distance of
a pixel is z = D - h, with D the distance to that deepest point.

Alignment space: inverse depth. The prior is mapped to q = 1 / (D - h), a robust affine fit
q ~ s d + t inside the face mask gives s and t, and heights come back as h' = D - 1 / (s d + t).
In that space the network's model is exactly affine, so a perfect network is recovered exactly
whatever D is, once D is right. D is unknown from one photo: ``camera_distance`` (default 1 m,
a portrait) sets it, and ``math.inf`` makes the fit affine in height (weak perspective, the same
assumption the landmark mesh makes). Only the network's detail is kept (below), so a wrong D
matters little: on a synthetic 9 cm relief seen from 1 m, fusing with D = 0.5 m or infinity moves
the fused heights by under 0.9 mm (tests/test_depth_networks.py).

Fusion: the prior keeps every frequency below a Gaussian split (sigma = ``lowpass_fraction`` of
the face width); above it the network's detail replaces the prior's by ``weight``, fading in from
the mask's border so the rim never steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FuseConfig:
    weight: float = 1.0             # 0 = the prior as is, 1 = all detail above the split from the network
    lowpass_fraction: float = 0.04  # Gaussian sigma of the frequency split, as a fraction of the face width
    camera_distance: float = 1.0    # metres to the face's deepest point; math.inf = weak perspective
    feather_fraction: float = 0.05  # the network's share ramps up over this fraction of the width inside the mask

    def __post_init__(self):
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fuse weight {self.weight} outside [0, 1]")
        if not self.camera_distance > 0:
            raise ValueError(f"camera distance {self.camera_distance} must be positive")


@dataclass(frozen=True)
class Alignment:
    scale: float           # s in q ~ s d + t (q: prior in the alignment space)
    shift: float           # t
    inliers: float         # fraction of mask pixels with non-negligible weight in the final fit
    usable: bool           # False: the network does not increase toward the camera where the prior does
    residual: float        # robust spread (1.4826 MAD) of aligned - prior inside the mask, in the prior's units


def to_alignment_space(height: np.ndarray, camera_distance: float) -> np.ndarray:
    return height if math.isinf(camera_distance) else 1.0 / (camera_distance - height)


def from_alignment_space(q: np.ndarray, camera_distance: float) -> np.ndarray:
    if math.isinf(camera_distance):
        return q
    # q <= 0 would be a point behind the camera: clamp to twice the distance (far behind the face).
    return camera_distance - 1.0 / np.maximum(q, 0.5 / camera_distance)


def robust_affine(x: np.ndarray, y: np.ndarray, iterations: int = 20) -> tuple[float, float, float]:
    """(s, t, inlier fraction) of y ~ s x + t by Tukey-biweight IRLS from a median/MAD start.

    Outliers (hair, glasses, a mis-segmented background pixel) get zero weight instead of tilting
    the fit as they would in least squares."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    spread_x = np.median(np.abs(x - np.median(x)))
    if spread_x <= 0:
        return 0.0, float(np.median(y)), 0.0
    s = np.median(np.abs(y - np.median(y))) / spread_x
    t = np.median(y - s * x)
    weights = np.ones_like(x)
    for _ in range(iterations):
        residual = y - (s * x + t)
        sigma = 1.4826 * np.median(np.abs(residual)) + 1e-12
        u = residual / (4.685 * sigma)
        weights = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        sw, swx, swy = weights.sum(), (weights * x).sum(), (weights * y).sum()
        sxx, sxy = (weights * x * x).sum(), (weights * x * y).sum()
        det = sw * sxx - swx * swx
        if det <= 0:
            break
        s_new, t_new = (sw * sxy - swx * swy) / det, (sxx * swy - swx * sxy) / det
        converged = abs(s_new - s) <= 1e-9 * abs(s) and abs(t_new - t) <= 1e-9 * (abs(t) + 1e-12)
        s, t = s_new, t_new
        if converged:
            break
    return float(s), float(t), float((weights > 0.1).mean())


def align_to_prior(network: np.ndarray, prior: np.ndarray, mask: np.ndarray,
                   camera_distance: float = 1.0) -> tuple[np.ndarray, Alignment]:
    """The network's relative inverse depth as metric heights matching ``prior`` inside ``mask``."""
    mask = mask.astype(bool)
    if prior[mask].max() >= camera_distance:
        raise ValueError(f"prior heights reach {prior[mask].max():.3f} m: not in front of a camera "
                         f"{camera_distance} m away")
    target = to_alignment_space(prior[mask].astype(np.float64), camera_distance)
    s, t, inliers = robust_affine(network[mask], target)
    aligned = from_alignment_space(s * network.astype(np.float64) + t, camera_distance)
    difference = aligned[mask] - prior[mask]
    residual = 1.4826 * float(np.median(np.abs(difference - np.median(difference))))
    return aligned.astype(np.float32), Alignment(scale=s, shift=t, inliers=inliers, usable=s > 0, residual=residual)


def masked_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of ``values`` using only pixels inside ``mask`` (normalised convolution),
    so the zeros outside the face do not drag its border down."""
    weight = mask.astype(np.float32)
    numerator = cv2.GaussianBlur((values * weight).astype(np.float32), (0, 0), sigma)
    denominator = cv2.GaussianBlur(weight, (0, 0), sigma)
    return numerator / np.maximum(denominator, 1e-6)


def face_width(mask: np.ndarray) -> float:
    columns = np.flatnonzero(mask.any(0))
    return float(columns[-1] - columns[0] + 1) if len(columns) else 0.0


def fuse_depth(network: np.ndarray, prior: np.ndarray, mask: np.ndarray,
               config: FuseConfig = FuseConfig(), trust: np.ndarray | None = None) -> tuple[np.ndarray, Alignment]:
    """(fused heights, alignment). Same grid and units as ``prior``; outside ``mask`` it is the prior.
    ``trust`` (0..1 per pixel, e.g. the network's own confidence) scales its share of the detail.

    ``network`` must already be on the prior's grid. If the alignment is unusable (the network
    disagrees in sign with the prior) the prior is returned unchanged."""
    mask = mask.astype(bool)
    prior = prior.astype(np.float32)
    if network.shape != prior.shape or mask.shape != prior.shape:
        raise ValueError(f"network {network.shape}, prior {prior.shape} and mask {mask.shape} must share a grid")
    if mask.sum() < 16:
        raise ValueError("the face mask has fewer than 16 pixels: nothing to align")
    aligned, alignment = align_to_prior(network, prior, mask, config.camera_distance)
    if not alignment.usable or config.weight == 0:
        return prior.copy(), alignment
    sigma = max(0.5, config.lowpass_fraction * face_width(mask))
    detail = (aligned - masked_blur(aligned, mask, sigma)) - (prior - masked_blur(prior, mask, sigma))
    share = detail_share(mask, config) * (1.0 if trust is None else trust)
    return (prior + share * detail).astype(np.float32), alignment


def detail_share(mask: np.ndarray, config: FuseConfig) -> np.ndarray:
    """The network's share of the detail per pixel: ``weight`` inside, fading in (smoothstep, no kink
    where the ramp ends) over ``feather_fraction`` of the face width from the mask's border, 0 outside."""
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    ramp = np.clip(inside / max(1.0, config.feather_fraction * face_width(mask)), 0.0, 1.0)
    return (config.weight * ramp * ramp * (3 - 2 * ramp)).astype(np.float32)
