"""One [0, 1] texture atlas for the whole head, repacked from the upstream UVs.

Upstream, every material has its own texture: the UVs span seven unit tiles (u in 0..7) and the
face, both scleras, both irises and the eye helpers all reuse tile 0. One image (what glTF, OBJ+MTL
and a single Blender material want) needs each of those charts in a place of its own. Each region
below takes one material's tile, scaled uniformly (no texel stretch) and inset by ``MARGIN``, so
seams stay where upstream has them and mip-mapping does not bleed between regions::

    v=1 +-----------------------------------+---------+
        |                                   |  back   |
        |                                   |  head   |
        |                                   +---------+
        |              face                 |  teeth  |
        |   (M_Face: skin from the neck     +---------+
        |    to the scalp, ears, lips)      |  gums,  |
        |                                   |  tongue |
   0.25 +-----------+-----------+-----+-----+---------+
        |           |           |iris |iris |         |
        |  sclera   |  sclera   |left |right|  eye-   |
        |   left    |   right   +-----+--+--+  lashes |
        |           |           |eye  |lL|lR|         |
        |           |           |occl.|bl|  |         |
    v=0 +-----------+-----------+-----+--+--+---------+
       u=0        0.25        0.5        0.75         1

The face gets 0.75 x 0.75 (56 % of the texels: the part a photo shows, 768 px across at 1024);
back head, teeth, gums+tongue, eyelashes and each sclera 0.25; irises and eye occlusion 0.125;
lacrimal fluid left/right (lL, lR) and eye blend (bl) 0.0625. The transparent eye occlusion and
eye blend shells of both eyes share their texels, as upstream; every other chart has its own.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import HeadModel

MARGIN = 1.0 / 512  # atlas units between a region's edge and its charts: two texels at 1024


@dataclass(frozen=True)
class Region:
    name: str
    material: str
    tile: int                  # upstream u tile the material's charts lie in
    origin: tuple[float, float]
    size: float
    mirror: str                # the region holding this one's left/right mirror image


REGIONS = (
    Region("face", "M_Face", 0, (0.0, 0.25), 0.75, "face"),
    Region("back_head", "M_BackHead", 1, (0.75, 0.75), 0.25, "back_head"),
    Region("teeth", "M_Teeth", 3, (0.75, 0.5), 0.25, "teeth"),
    Region("gums_tongue", "M_GumsTongue", 2, (0.75, 0.25), 0.25, "gums_tongue"),
    Region("eyelashes", "M_EyeLashes", 6, (0.75, 0.0), 0.25, "eyelashes"),
    Region("sclera_left", "M_ScleraLeft", 0, (0.0, 0.0), 0.25, "sclera_right"),
    Region("sclera_right", "M_ScleraRight", 0, (0.25, 0.0), 0.25, "sclera_left"),
    Region("iris_left", "M_IrisLeft", 0, (0.5, 0.125), 0.125, "iris_right"),
    Region("iris_right", "M_IrisRight", 0, (0.625, 0.125), 0.125, "iris_left"),
    Region("eye_occlusion", "M_EyeOcclusion", 0, (0.5, 0.0), 0.125, "eye_occlusion"),
    Region("lacrimal_left", "M_LacrimalFluid", 4, (0.625, 0.0625), 0.0625, "lacrimal_right"),
    Region("lacrimal_right", "M_LacrimalFluid", 5, (0.6875, 0.0625), 0.0625, "lacrimal_left"),
    Region("eye_blend", "M_EyeBlend", 0, (0.625, 0.0), 0.0625, "eye_blend"),
)
REGION_INDEX = {region.name: i for i, region in enumerate(REGIONS)}


@dataclass(frozen=True)
class Atlas:
    uv: np.ndarray           # (T, 2) float32 atlas coordinates in [0, 1]
    face_uv: np.ndarray      # (F, 3) int32 per-corner index into uv (upstream seams kept)
    face_region: np.ndarray  # (F,) uint8 index into REGIONS

    @property
    def corner_uv(self) -> np.ndarray:
        """(F, 3, 2) float32 per-corner atlas coordinates."""
        return self.uv[self.face_uv]


def atlas_of(model: "HeadModel") -> Atlas:
    """The model's UVs repacked into one [0, 1] texture, computed once per model (kept while it lives)."""
    atlas = _ATLASES.get(model)
    if atlas is None:
        atlas = _ATLASES[model] = _build_atlas(model)
    return atlas


_ATLASES: "weakref.WeakKeyDictionary[HeadModel, Atlas]" = weakref.WeakKeyDictionary()


def _build_atlas(model: "HeadModel") -> Atlas:
    """Repack the model's upstream UVs into the single-image layout above (deterministic)."""
    corner_uv = model.uv[model.face_uv]
    tile = np.floor(corner_uv[..., 0].mean(axis=1)).astype(np.int64)
    lookup = {(r.material, r.tile): i for i, r in enumerate(REGIONS)}
    keys = [(model.material_names[m], t) for m, t in zip(model.face_material.tolist(), tile.tolist())]
    unknown = sorted({key for key in keys if key not in lookup})
    if unknown:
        raise ValueError(f"UV layout is not ICT-FaceKit's: no atlas region for (material, tile) {unknown[:4]}")
    face_region = np.array([lookup[key] for key in keys], np.uint8)
    # One atlas coordinate per (region, upstream coordinate): shared corners stay shared, seams stay seams.
    pair = face_region.astype(np.int64)[:, None] * len(model.uv) + model.face_uv
    pairs, inverse = np.unique(pair.ravel(), return_inverse=True)
    region_of, source = pairs // len(model.uv), pairs % len(model.uv)
    origin = np.array([REGIONS[i].origin for i in range(len(REGIONS))], np.float64)[region_of]
    size = np.array([r.size for r in REGIONS], np.float64)[region_of, None]
    tiles = np.array([r.tile for r in REGIONS], np.float64)[region_of]
    local = model.uv[source].astype(np.float64) - np.stack([tiles, np.zeros_like(tiles)], axis=1)
    uv = origin + MARGIN + np.clip(local, 0.0, 1.0) * (size - 2 * MARGIN)
    return Atlas(uv.astype(np.float32), inverse.reshape(-1, 3).astype(np.int32), face_region)
