"""Shape from shading anchored by the model: a smooth displacement along the fitted normals.

Unknown: ``d`` (metres) per vertex of the face area, moving ``X = X0 + d * n0``; zero on the face
area's border (the rest of the head stays the model's). Loss, jointly with the SH lighting:

- photometric: robust (Cauchy) difference between the SH-shaded render and the photo on the skin
  pixels (fixed visibility, rasterised again between rounds);
- bending: ``|L d|^2`` with the mesh's graph Laplacian (a thin shell resisting curvature change);
- shrink: a small ``|d|^2`` (shading fixes slopes, not the absolute offset);
- landmarks: the 68 landmark vertices may not move in the image (the fit put them there).

The variables are ``u`` with ``d = (I + lambda L)^-1 u`` ("large steps" reparameterisation): each
gradient step is a smooth field, so the low frequencies the shading asks for converge in tens of
steps instead of thousands. The sparse factorisation is done once per model (scipy, CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

from . import shading
from .raster import project

if TYPE_CHECKING:
    from .lighting import Lighting
    from .model import HeadModel


LUMINANCE = (0.2126, 0.7152, 0.0722)   # Rec. 709 weights of linear RGB


@dataclass(frozen=True)
class ReliefConfig:
    iterations: int = 20            # optimiser steps per round
    rounds: int = 3                 # visibility, pixels and lighting refreshed between rounds
    step_m: float = 3e-4            # Adam step on u, metres
    smoothing: float = 15.0         # lambda of the reparameterisation (I + lambda L)^-1
    bending: float = 1.0            # weight of mean (L d)^2 / edge^2, relative to the photometric term
    shrink: float = 0.05            # weight of mean (d / 1 cm)^2
    landmark_weight: float = 1e-3   # per squared pixel of landmark drift (view pixels)
    robust_scale: float = 0.05      # Cauchy scale of the luminance residual (linear 0..1 units)
    max_displacement_m: float = 0.006


@dataclass(frozen=True)
class Patch:
    """The part of the mesh the displacement moves, in local ids."""
    vertices: np.ndarray      # (n,) global ids of the patch's vertices (free ones first)
    faces: np.ndarray         # (f, 3) local ids: every drawn triangle touching a free vertex's ring
    free_count: int           # local ids 0..free_count-1 move
    laplacian: sparse.csr_matrix  # (free, free) graph Laplacian with the border held at zero
    landmarks: np.ndarray     # local ids of the 68 landmark vertices that lie in the patch
    solver: Callable          # x = (I + lambda L)^-1 b


@lru_cache(maxsize=4)
def face_patch(model: "HeadModel", drawn: bytes, smoothing: float) -> Patch:
    """Free vertices: the face area minus its border ring. ``drawn`` is the triangles' bytes
    (int64, F x 3), hashable for the cache."""
    faces = np.frombuffer(drawn, np.int64).reshape(-1, 3)
    area = model.face_mask
    crossing = faces[(area[faces].any(1)) & (~area[faces].all(1))]
    border = np.zeros(model.vertex_count, bool)
    border[crossing.ravel()] = True
    free = np.nonzero(area & ~border)[0]
    is_free = np.zeros(model.vertex_count, bool)
    is_free[free] = True
    ring = faces[is_free[faces].any(1)]
    touching = faces[np.isin(faces, ring).any(1)]            # normals of the ring's vertices are exact
    others = np.setdiff1d(np.unique(touching), free)
    vertices = np.concatenate([free, others])
    local = np.full(model.vertex_count, -1, np.int64)
    local[vertices] = np.arange(len(vertices))
    laplacian = _graph_laplacian(local[touching], len(vertices))[:len(free), :len(free)].tocsr()
    factor = splu((sparse.identity(len(free)) + smoothing * laplacian).tocsc())
    marks = local[model.landmarks68]
    return Patch(vertices, local[touching], len(free), laplacian, marks[(marks >= 0) & (marks < len(free))],
                 factor.solve)


def _graph_laplacian(faces: np.ndarray, count: int) -> sparse.csr_matrix:
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count)).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    return (sparse.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency).tocsr()


class _Smooth(torch.autograd.Function):
    """``(I + lambda L)^-1 u`` with its (symmetric) adjoint as the backward pass."""

    @staticmethod
    def forward(ctx, u, solver):
        ctx.solver = solver
        return torch.from_numpy(solver(u.detach().cpu().double().numpy())).to(u)

    @staticmethod
    def backward(ctx, grad):
        return torch.from_numpy(ctx.solver(grad.detach().cpu().double().numpy())).to(grad), None


@dataclass
class Observation:
    """What the photometric term compares: photo colours at pixels of the patch's skin triangles."""
    pixels: shading.Pixels    # corners in patch-local ids
    colours: torch.Tensor     # (P, 3) linear photo colours
    weight: torch.Tensor      # (P,) prior weight in 0..1 (facing, skin colour)
    core: torch.Tensor        # (P,) bool: on the central face (``skin.core_mask``)


def refine_relief(patch: Patch, rest: torch.Tensor, normals: torch.Tensor,
                  observe: Callable[[torch.Tensor], Observation],
                  fit_light: Callable[[torch.Tensor, Observation], "Lighting"], camera, config: ReliefConfig,
                  report: Callable[[float], None] = lambda f: None) -> tuple[torch.Tensor, "Lighting"]:
    """Displacement (free,) in metres and the lighting refitted to the refined shape. ``rest`` and
    ``normals``: the patch's camera-frame vertices and unit normals; ``observe(vertices)``
    rasterises and returns the skin pixels; ``fit_light`` solves the lighting for a fixed shape.
    Shape and light alternate: the light in closed form once per round, then gradient steps on
    the shape, whose loss is on luminance only (skin's albedo varies mostly in hue, shading not)
    and weighted by the lighting's robust weights (hair, cast shadows, highlights count little)."""
    device, dtype = rest.device, rest.dtype
    u = torch.zeros(patch.free_count, dtype=torch.float64, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([u], lr=config.step_m)
    terms = _Regulariser(patch, rest, camera, config)
    luminance = torch.tensor(LUMINANCE, dtype=dtype, device=device)
    faces = torch.as_tensor(patch.faces, device=device)
    for round_index in range(config.rounds):
        with torch.no_grad():
            vertices = _displaced(rest, normals, _field(u, patch, config).to(dtype), patch.free_count)
            observation = observe(vertices)
            light = fit_light(vertices, observation)
        target = observation.colours @ luminance
        for step in range(config.iterations):
            optimiser.zero_grad()
            d = _field(u, patch, config).to(dtype)
            vertices = _displaced(rest, normals, d, patch.free_count)
            normal = shading.pixel_normals(vertices, faces, observation.pixels)
            predicted = shading.shade(normal, light.albedo, light.sh) @ luminance
            residual = (predicted - target) / config.robust_scale
            photometric = (light.weight * torch.log1p(residual ** 2)).sum() / light.weight.sum()
            (photometric + terms(d, vertices)).backward()
            optimiser.step()
            report((round_index * config.iterations + step + 1) / (config.rounds * config.iterations))
    with torch.no_grad():
        d = _field(u, patch, config).to(dtype)
        vertices = _displaced(rest, normals, d, patch.free_count)
        return d, fit_light(vertices, observe(vertices))


class _Regulariser:
    """Bending, shrink and landmark-drift terms of the loss (see the module docstring)."""

    def __init__(self, patch: Patch, rest: torch.Tensor, camera, config: ReliefConfig):
        coo = patch.laplacian.tocoo()
        off = coo.row != coo.col
        self.rows = torch.as_tensor(coo.row[off], dtype=torch.int64, device=rest.device)
        self.cols = torch.as_tensor(coo.col[off], dtype=torch.int64, device=rest.device)
        self.degree = torch.as_tensor(patch.laplacian.diagonal(), dtype=rest.dtype, device=rest.device)
        self.marks = torch.as_tensor(patch.landmarks, device=rest.device)
        self.camera, self.config = camera, config
        self.marks_px = self._landmarks_px(rest)
        self.edge = _mean_edge(rest, torch.as_tensor(patch.faces, device=rest.device))

    def _landmarks_px(self, vertices: torch.Tensor) -> torch.Tensor:
        return project(vertices[self.marks], self.camera.focal, self.camera.principal)[:, :2]

    def __call__(self, d: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
        config = self.config
        curvature = self.degree * d - torch.zeros_like(d).index_add(0, self.rows, d[self.cols])   # L d
        bending = (curvature / self.edge ** 2).square().mean() * 1e-4
        drift = (self._landmarks_px(vertices) - self.marks_px).square().sum()
        return config.bending * bending + config.shrink * (d / 0.01).square().mean() + config.landmark_weight * drift


def _field(u: torch.Tensor, patch: Patch, config: ReliefConfig) -> torch.Tensor:
    """The displacement of the parameters: smooth, and bounded by ``max_displacement_m``
    (shading that only a deeper carving could explain is hair, a highlight or make-up)."""
    bound = config.max_displacement_m
    return bound * torch.tanh(_Smooth.apply(u, patch.solver) / bound)


def _displaced(rest: torch.Tensor, normals: torch.Tensor, d: torch.Tensor, free: int) -> torch.Tensor:
    return torch.cat([rest[:free] + d[:, None] * normals[:free], rest[free:]])


def _mean_edge(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    return float((vertices[faces[:, 0]] - vertices[faces[:, 1]]).norm(dim=1).mean())
