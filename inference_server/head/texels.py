"""The atlas rasterised once per model and size: which triangle (and where in it) every texel is,
where its left/right mirror image lies, and which covered texel fills each empty one.

Image convention: row 0 is the top of the texture (v = 1), as images are stored and as Blender
maps UV (0, 0) to the bottom-left pixel; texel (row, col) has its centre at
``u = (col + 0.5) / size``, ``v = 1 - (row + 0.5) / size``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, sparse

from .atlas import REGION_INDEX, REGIONS, atlas_of
from .symmetry import mirror_of

if TYPE_CHECKING:
    from .model import HeadModel

INSIDE_EPS = 1e-6
CHUNK_CANDIDATES = 4_000_000  # candidate texels per vectorised batch (memory bound ~200 MB)


@dataclass(frozen=True)
class TexelMap:
    size: int
    texel: np.ndarray          # (N,) int64 flat index (row * size + col) of each covered texel
    face: np.ndarray           # (N,) int32 triangle the texel lies in
    corners: np.ndarray        # (N, 3) int32 that triangle's vertices
    bary: np.ndarray           # (N, 3) float32 barycentric coordinates in that triangle
    mirror_xy: np.ndarray      # (N, 2) float32 (col, row) image position of the mirror texel; NaN if none
    nearest: np.ndarray        # (size * size,) int64 for every texel, the nearest covered one (flat index)

    @cached_property
    def weights(self) -> sparse.csr_matrix:
        """(N, V) barycentric weights, three per row: one sparse product interpolates any per-vertex
        values (5x faster than gathering the corners; texture work does it several times a face)."""
        rows = np.arange(0, 3 * len(self.texel) + 1, 3)
        return sparse.csr_matrix((self.bary.ravel(), self.corners.ravel(), rows),
                                 shape=(len(self.texel), int(self.corners.max()) + 1))


def interpolate(texels: TexelMap, values: np.ndarray) -> np.ndarray:
    """Per-vertex ``values`` (V, C) at every covered texel (barycentric), (N, C) float32."""
    values = values.astype(np.float32, copy=False)
    weights = texels.weights
    if values.shape[0] > weights.shape[1]:  # vertices no texel touches (the last ones) add nothing
        values = values[:weights.shape[1]]
    return np.asarray(weights @ values, np.float32)


def atlas_xy(uv: np.ndarray, size: int) -> np.ndarray:
    """Atlas UVs to continuous (col, row) image coordinates (texel centres at +0.5)."""
    return np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1)


@lru_cache(maxsize=4)
def texel_map(model: "HeadModel", size: int) -> TexelMap:
    corner_xy = atlas_xy(atlas_of(model).corner_uv.astype(np.float64), size)
    texel, face, bary = rasterise(corner_xy, size)
    covered = np.zeros(size * size, bool)
    covered[texel] = True
    _, nearest = ndimage.distance_transform_edt(~covered.reshape(size, size), return_indices=True)
    nearest = (nearest[0] * size + nearest[1]).ravel()
    return TexelMap(size, texel, face, model.faces[face], bary.astype(np.float32), _mirror_xy(model, face, bary, size),
                    nearest)


def rasterise(corner_xy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centres lie in each triangle: (flat texel, triangle, barycentrics). Vectorised
    over triangles grouped by bounding-box size (rounded up to powers of two, so little is wasted).
    A texel on an edge shared by two triangles goes to one of them."""
    lo = np.clip(np.ceil(corner_xy.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(corner_xy.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    extent = hi - lo + 1
    bucket = 2 ** np.ceil(np.log2(np.maximum(extent, 1))).astype(np.int64)
    bucket[(corner_xy.max(axis=1) - 0.5 < lo).any(axis=1) | (extent <= 0).any(axis=1)] = 0  # holds no centre
    found = []
    for w, h in np.unique(bucket, axis=0):
        members = np.nonzero((bucket[:, 0] == w) & (bucket[:, 1] == h))[0] if w else []
        step = max(1, CHUNK_CANDIDATES // (w * h)) if w else 1
        for i in range(0, len(members), step):
            batch = members[i:i + step]
            texel, index, bary = _rasterise_batch(corner_xy[batch], lo[batch], hi[batch], w, h, size)
            found.append((texel, batch[index], bary))
    texel, face, bary = (np.concatenate(parts) for parts in zip(*found))
    _, first = np.unique(texel, return_index=True)
    return texel[first], face[first].astype(np.int32), bary[first]


def _rasterise_batch(tri: np.ndarray, lo: np.ndarray, hi: np.ndarray, w: int, h: int, size: int):
    cols = lo[:, 0, None, None] + np.arange(w)[None, None, :]
    rows = lo[:, 1, None, None] + np.arange(h)[None, :, None]
    cols, rows = np.broadcast_arrays(cols, rows)
    inside_box = (cols <= hi[:, 0, None, None]) & (rows <= hi[:, 1, None, None])
    q = np.stack([cols + 0.5, rows + 0.5], axis=-1).astype(np.float64)       # (n, h, w, 2)
    p0, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    den = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    den = np.where(np.abs(den) < 1e-12, np.nan, den)[:, None, None]
    d = q - p0[:, None, None, :]
    b1 = (d[..., 0] * e2[:, None, None, 1] - e2[:, None, None, 0] * d[..., 1]) / den
    b2 = (e1[:, None, None, 0] * d[..., 1] - d[..., 0] * e1[:, None, None, 1]) / den
    b0 = 1.0 - b1 - b2
    inside = inside_box & (b0 >= -INSIDE_EPS) & (b1 >= -INSIDE_EPS) & (b2 >= -INSIDE_EPS)
    n, r, c = np.nonzero(inside)
    bary = np.clip(np.stack([b0[n, r, c], b1[n, r, c], b2[n, r, c]], axis=1), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    return rows[n, r, c] * size + cols[n, r, c], n, bary


def _mirror_xy(model: "HeadModel", face: np.ndarray, bary: np.ndarray, size: int) -> np.ndarray:
    """Image position of each texel's mirror image: the same barycentrics in the mirrored vertices,
    placed with the mirror region's UVs. NaN where a corner has no mirror, or the mirrored UV
    triangle is not the original's mirror (it straddles a seam)."""
    atlas, mirror = atlas_of(model), mirror_of(model)
    region_uv = np.full((len(REGIONS), model.vertex_count, 2), np.nan, np.float64)
    region_uv[np.repeat(atlas.face_region, 3), model.faces.ravel()] = atlas.corner_uv.reshape(-1, 2)
    mirror_region = np.array([REGION_INDEX[r.mirror] for r in REGIONS])[atlas.face_region]
    mirrored_uv = region_uv[mirror_region[:, None], mirror.index[model.faces]]          # (F, 3, 2)
    own_area, mirrored_area = _uv_area(atlas.corner_uv.astype(np.float64)), _uv_area(mirrored_uv)
    usable = (mirror.matched[model.faces].all(axis=1) & (mirrored_area > 0.5 * own_area)
              & (mirrored_area < 2.0 * own_area))
    mirrored_uv[~usable] = np.nan
    uv = np.einsum("nk,nkc->nc", bary, mirrored_uv[face])
    return atlas_xy(uv, size).astype(np.float32)


def _uv_area(corner_uv: np.ndarray) -> np.ndarray:
    e1, e2 = corner_uv[:, 1] - corner_uv[:, 0], corner_uv[:, 2] - corner_uv[:, 0]
    with np.errstate(invalid="ignore"):
        return np.abs(e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]) / 2
