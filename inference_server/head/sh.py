"""Second-order spherical-harmonics lighting: 9 coefficients per colour channel, in the convention
``addon.wire.sh`` defines for both ends (coefficient order, normalisation, the cosine kernel).

A Lambertian surface of albedo ``a`` and unit normal ``n`` under distant light of radiance
``L(w) = sum_k sh[k] * Y_k(w)`` shows ``a * E(n)``, with the irradiance ``E(n) = sum_k A_l(k) *
sh[k] * Y_k(n)`` (the clamped-cosine kernel is band-limited enough that bands 0..2 carry ~99 % of it).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from addon.wire import sh as convention

COUNT = convention.COUNT
KERNEL = convention.KERNEL


def radiance_basis(normals):
    """(..., 3) unit directions -> (..., 9) real SH ``Y_k`` (torch or numpy, same type back)."""
    return convention.radiance_basis(normals, torch.stack if isinstance(normals, torch.Tensor) else np.stack)


def irradiance_basis(normals):
    """(..., 3) unit normals -> (..., 9) basis with the cosine kernel folded in: ``E = basis @ sh``."""
    basis = radiance_basis(normals)
    kernel = (torch.tensor(KERNEL, dtype=basis.dtype, device=basis.device) if isinstance(basis, torch.Tensor)
              else np.asarray(KERNEL))
    return basis * kernel


def irradiance(normals, sh):
    """Irradiance (..., 3) at unit normals (..., 3) under lighting ``sh`` (9, 3)."""
    return irradiance_basis(normals) @ sh


def directional(direction, colour=(1.0, 1.0, 1.0), ambient=(0.0, 0.0, 0.0)) -> np.ndarray:
    """SH (9, 3) of a distant light towards ``direction`` (unit vector from the surface to the
    light) of irradiance ``colour`` at normal incidence, plus uniform ``ambient`` irradiance."""
    w = np.asarray(direction, np.float64)
    w = w / np.linalg.norm(w)
    # A directional source of radiance c: sh_k = c * Y_k(w); its band-limited peak is 1.0625 c.
    sh = radiance_basis(w)[:, None] * np.asarray(colour, np.float64)[None, :] / 1.0625
    sh[0] += np.asarray(ambient, np.float64) / (math.pi * convention.Y[0])
    return sh


def fibonacci_sphere(count: int) -> np.ndarray:
    """``count`` near-uniform unit directions (N, 3)."""
    i = np.arange(count) + 0.5
    z = 1 - 2 * i / count
    phi = math.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def rotate(sh: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The same lighting in another frame: ``rotation`` maps directions of the old frame to the
    new one (``d_new = R @ d_old``). Exact: each band is closed under rotation, so a least-squares
    fit on enough directions recovers the rotated coefficients."""
    old = fibonacci_sphere(64)
    new = old @ np.asarray(rotation, np.float64).T
    values = irradiance_basis(old) @ sh
    return np.linalg.lstsq(irradiance_basis(new), values, rcond=None)[0]


def irradiance_error(estimate: np.ndarray, truth: np.ndarray, directions: np.ndarray | None = None,
                     per_channel_scale: bool = True) -> float:
    """Relative RMS difference of two lightings' irradiance over ``directions`` (default: the
    whole sphere). Albedo and light trade a per-channel factor no photo can separate, so by default
    the estimate is first scaled per channel to fit the truth best."""
    directions = fibonacci_sphere(2000) if directions is None else directions
    basis = irradiance_basis(directions)
    e, t = basis @ estimate, basis @ truth
    if per_channel_scale:
        e = e * ((e * t).sum(0) / np.maximum((e * e).sum(0), 1e-12))
    return float(np.sqrt(((e - t) ** 2).mean() / (t ** 2).mean()))
