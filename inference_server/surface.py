"""Smooth height field through sparse landmarks: a thin-plate (biharmonic) fit on a coarse grid.

Rasterising the ~900 landmark triangles gives a faceted, piecewise-planar face. Instead we solve

    min_z  sum_k (B z - h_k)^2  +  w * (|z_xx|^2 + 2 |z_xy|^2 + |z_yy|^2)

on a G x G grid covering the landmarks (B = bilinear sampling at the landmark positions), then
evaluate the grid with a cubic spline anywhere. The thin-plate energy's null space is the affine
functions, which three non-collinear landmarks pin down, so the sparse system is always solvable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.ndimage import map_coordinates
from scipy.sparse.linalg import spsolve


@dataclass(frozen=True)
class HeightField:
    """Heights on a regular grid; ``origin``/``step`` map grid indices to pixel coordinates."""

    grid: np.ndarray      # (G, G) heights, row = y
    origin: np.ndarray    # (2,) pixel x, y of grid node (0, 0)
    step: float           # pixels between grid nodes

    def sample(self, xy: np.ndarray) -> np.ndarray:
        """Cubic-spline heights at pixel positions ``xy`` (N, 2)."""
        grid_xy = (np.asarray(xy, dtype=np.float64) - self.origin) / self.step
        return map_coordinates(self.grid, [grid_xy[:, 1], grid_xy[:, 0]], order=3, mode="nearest")


def _stencil(g: int, entries: list[tuple[int, int, float]]) -> sp.csr_matrix:
    """One finite-difference row per grid node where the whole stencil (row, col offset, weight) fits."""
    idx = np.arange(g * g).reshape(g, g)
    r0, r1 = -min(e[0] for e in entries), g - max(e[0] for e in entries)
    c0, c1 = -min(e[1] for e in entries), g - max(e[1] for e in entries)
    n = (r1 - r0) * (c1 - c0)
    rows = np.tile(np.arange(n), len(entries))
    cols = np.concatenate([idx[r0 + dr:r1 + dr, c0 + dc:c1 + dc].ravel() for dr, dc, _ in entries])
    vals = np.concatenate([np.full(n, weight) for _, _, weight in entries])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, g * g))


def _second_differences(g: int) -> sp.csr_matrix:
    """Stacked D_xx, sqrt(2) D_xy, D_yy on a g x g grid (row-major: index = row * g + col)."""
    r2 = np.sqrt(2.0)
    return sp.vstack([
        _stencil(g, [(0, -1, 1.0), (0, 0, -2.0), (0, 1, 1.0)]),
        _stencil(g, [(0, 0, r2), (0, 1, -r2), (1, 0, -r2), (1, 1, r2)]),
        _stencil(g, [(-1, 0, 1.0), (0, 0, -2.0), (1, 0, 1.0)]),
    ]).tocsr()


_ENERGY_CACHE: dict[int, sp.csr_matrix] = {}


def _thin_plate_energy(g: int) -> sp.csr_matrix:
    if g not in _ENERGY_CACHE:
        d = _second_differences(g)
        _ENERGY_CACHE[g] = (d.T @ d).tocsr()
    return _ENERGY_CACHE[g]


def _bilinear_matrix(grid_xy: np.ndarray, g: int) -> sp.csr_matrix:
    x = np.clip(grid_xy[:, 0], 0, g - 1 - 1e-9)
    y = np.clip(grid_xy[:, 1], 0, g - 1 - 1e-9)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    n = len(x)
    rows = np.repeat(np.arange(n), 4)
    cols = np.stack([y0 * g + x0, y0 * g + x0 + 1, (y0 + 1) * g + x0, (y0 + 1) * g + x0 + 1], 1).ravel()
    vals = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1).ravel()
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, g * g))


def fit_height_field(points: np.ndarray, weights: np.ndarray | None = None, grid_size: int = 64,
                     smoothness: float = 0.4, pad: float = 0.08) -> HeightField:
    """Thin-plate fit through ``points`` (N, 3: pixel x, pixel y, height), each weighted by ``weights``.

    ``smoothness`` trades exact interpolation (0) against fairness; heights and smoothness are both in
    units of grid steps, so the result does not depend on the image resolution.
    """
    xy, heights = points[:, :2], points[:, 2]
    lo, hi = xy.min(0), xy.max(0)
    extent = float((hi - lo).max()) * (1 + 2 * pad)
    step = extent / (grid_size - 1)
    origin = (lo + hi) / 2 - extent / 2
    data = _bilinear_matrix((xy - origin) / step, grid_size)
    weighted = data.T @ sp.diags(np.ones(len(xy)) if weights is None else weights)
    system = (weighted @ data + smoothness * _thin_plate_energy(grid_size)).tocsc()
    # The system is symmetric: a minimum-degree ordering on A+A^T fills in less than the default COLAMD.
    solution = spsolve(system, weighted @ (heights / step), permc_spec="MMD_AT_PLUS_A")
    return HeightField(grid=solution.reshape(grid_size, grid_size) * step, origin=origin, step=step)
