"""SH lighting from the skin pixels of a photo, robust to what a smooth Lambertian skin does not explain.

Model: ``photo_c = albedo_c * E_c(normal)`` with one skin albedo per channel, so each channel is
linear in ``M_c = albedo_c * sh_c``: iteratively reweighted least squares (Cauchy weights on the
colour residual) ignores cast shadows, highlights, stubble and stray hair; pixels far from the
skin's chromaticity (hair, beard, background) never take part. Only the camera-facing half of the
normals is seen, so the band-1 and band-2 coefficients get a small ridge towards zero.

Albedo and light trade a per-channel factor that no photo separates. The convention here: the
irradiance is 1 at the ``reference_percentile`` of the skin pixels, i.e. the albedo of the well-lit
skin is its photo colour and darker skin is brightened to match it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import sh as spherical


@dataclass(frozen=True)
class LightingConfig:
    iterations: int = 6             # IRLS rounds
    robust_scale: float = 2.5       # Cauchy scale, in robust standard deviations of the residual
    ridge: float = 2e-3             # pull of bands 1-2 towards zero, relative to the mean data weight
    chroma_mads: float = 4.0        # chromaticity this many MADs off the skin median: not skin
    dark_fraction: float = 0.25     # pixels darker than this x median luminance: chromaticity not trusted
    reference_percentile: float = 90.0


@dataclass
class Lighting:
    sh: torch.Tensor        # (9, 3) camera-frame SH, scaled by the convention above
    albedo: torch.Tensor    # (3,) skin albedo (linear)
    weight: torch.Tensor    # (P,) final robust weight of each pixel in 0..1


def skin_chroma_weight(colours: torch.Tensor, config: LightingConfig) -> torch.Tensor:
    """(P,) 0/1: the pixel's chromaticity is the skin's (dark pixels pass: shadows are skin too)."""
    luminance = colours.sum(1)
    chroma = colours / luminance.clamp(min=1e-6)[:, None]
    bright = luminance > config.dark_fraction * luminance.median()
    if int(bright.sum()) < 20:
        return torch.ones_like(luminance)
    median = chroma[bright].median(0).values
    mad = (chroma[bright] - median).abs().median(0).values.clamp(min=0.004) * 1.4826
    off = ((chroma - median).abs() > config.chroma_mads * mad).any(1)
    return (~(off & bright)).to(colours.dtype)


def fit_lighting(normals: torch.Tensor, colours: torch.Tensor, prior_weight: torch.Tensor,
                 core: torch.Tensor | None = None, config: LightingConfig = LightingConfig()) -> Lighting:
    """SH lighting and skin albedo from pixel ``normals`` (P, 3, camera frame) and linear
    ``colours`` (P, 3); ``prior_weight`` (P,) says how much each pixel may count (0 = never).
    The first solve uses only the ``core`` pixels (P,) bool, when given enough of them: the
    robust weights then start from a lighting that hair on the forehead did not pull."""
    if int((prior_weight > 0).sum()) < 30:
        raise ValueError("too few visible skin pixels to estimate the lighting")
    basis = spherical.irradiance_basis(normals)                                # (P, 9)
    prior = prior_weight * skin_chroma_weight(colours, config)
    weight = prior * core if core is not None and int((prior * core > 0).sum()) >= 30 else prior
    for _ in range(config.iterations):
        product = _weighted_solve(basis, colours, weight, config.ridge)        # (9, 3) albedo x sh
        residual = (basis @ product - colours).norm(dim=1)
        scale = 1.4826 * residual[weight > 0.5 * weight.max()].median().clamp(min=1e-4) * config.robust_scale
        weight = prior / (1 + (residual / scale) ** 2)
    predicted = basis @ product
    reference = torch.quantile(predicted[prior > 0], config.reference_percentile / 100, dim=0).clamp(min=1e-6)
    return Lighting(sh=product / reference, albedo=reference, weight=weight)


def _weighted_solve(basis: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ridge: float) -> torch.Tensor:
    normal = basis.T @ (weight[:, None] * basis)
    penalty = torch.ones(spherical.COUNT, dtype=basis.dtype, device=basis.device)
    penalty[0] = 0.0
    normal = normal + torch.diag(penalty) * ridge * normal.diagonal()[0]
    return torch.linalg.solve(normal, basis.T @ (weight[:, None] * target))
