"""A depth network's prediction on the aligned crop, fused into the face's geometry.

Frames. The network sees the crop, so its output is relative inverse depth along the camera's axis,
on crop pixels. The face is built in its own frontal frame (``FaceGeometry``: the landmarks turned
about the vertical axis until the face looks at the camera). Fusion happens on a grid in the frontal
frame, in the camera's depth: every grid point of the landmark surface is looked up in the prediction
where the camera sees it (``FaceGeometry.seen_at``, the same mapping as the UVs), and the prior it is
aligned to is that point's camera depth. So the alignment compares like with like whatever the yaw,
and the network's correction dz along the camera ray becomes a frontal height change cos(yaw) * dz
(to first order: the sideways shift sin(yaw) * dz of the point, a millimetre or two at 30 degrees, is
dropped). Doing it the other way round (fusing on the crop grid, then frontalising) would need the
inverse of that mapping, which a turned face's hidden cheek does not have.

Bands. The mesh carries the fused surface low-passed at the mesh's own scale (``split`` texture pixels:
the detail map's radius, or the mesh spacing if that is coarser), so the network's fine texture never
aliases into spikes; the detail map carries the network's relief above that scale, in the crop's frame
where the texture lives. The two bands are complementary: nothing is displaced twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import map_coordinates

from addon.wire import options

from ..surface import HeightField
from .fuse import Alignment, FuseConfig, detail_share, from_alignment_space, fuse_depth, masked_blur

FUSION_GRID = 256  # cells across the texture square: 2 texture pixels at the default 512, fusion in ~50 ms
# The detail map is displaced by ``detail_strength`` metres per unit in Blender: dividing the network's
# relief by the default makes the default strength reproduce it at its true size.
DETAIL_METRES_PER_UNIT = options.BY_NAME["detail_strength"].default


@dataclass(frozen=True)
class FusedField:
    """The landmark surface plus the network's correction: what the mesh, depth map and landmarks sample."""

    prior: HeightField
    correction: HeightField

    def sample(self, xy: np.ndarray) -> np.ndarray:
        return self.prior.sample(xy) + self.correction.sample(xy)


@dataclass(frozen=True)
class FaceFusion:
    alignment: Alignment
    used: bool                   # the network's depth moved the face
    detail: np.ndarray | None    # (T, T) detail map from the network; None when unused or not asked for


def sample_image(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear values of a (H, W) image at pixel positions ``xy`` (N, 2), edges extended."""
    index = np.asarray(xy, np.float64) - 0.5  # pixel centres sit at +0.5
    return map_coordinates(image.astype(np.float32), [index[:, 1], index[:, 0]], order=1, mode="nearest")


def fuse_into_face(geometry, inverse: np.ndarray, fuse: FuseConfig, split: float,
                   with_detail: bool = True, confidence: np.ndarray | None = None) -> FaceFusion:
    """Fuse the network's ``inverse`` depth (crop-sized) into ``geometry``'s surface, in place.

    ``split`` (texture pixels) divides what the mesh carries from what the detail map carries; without
    ``with_detail`` (a network too coarse for fine relief) only the mesh band is used. When the
    alignment is unusable (the network disagrees in sign with the landmarks) or ``fuse.weight`` is 0,
    the geometry is left as it was and no detail map is made. ``confidence`` (crop-sized, 0..1) scales
    the network's share of the shape per point."""
    step = geometry.config.texture_size / FUSION_GRID
    centres = geometry.grid_centres(FUSION_GRID)
    seen = geometry.seen_at(centres, geometry.field.sample(centres))
    mask = geometry.visible(FUSION_GRID, geometry.region_mask(FUSION_GRID))  # hidden points keep the prior
    camera_depth = seen[:, 2].reshape(FUSION_GRID, FUSION_GRID)
    prior = ((camera_depth - camera_depth[mask].min()) * geometry.scale).astype(np.float32)
    network = sample_image(inverse, seen[:, :2]).reshape(prior.shape)
    trust = None if confidence is None else sample_image(confidence, seen[:, :2]).reshape(prior.shape)
    fused, alignment = fuse_depth(network, prior, mask, fuse, trust)
    if not alignment.usable or fuse.weight == 0:
        return FaceFusion(alignment, False, None)
    along_ray = (fused - prior) / geometry.scale * geometry.frontalize[2, 2]  # metres -> frontal height, pixels
    mesh_band = cv2.GaussianBlur(along_ray, (0, 0), split / step)
    geometry.use_field(FusedField(geometry.field, HeightField(mesh_band, np.array([step / 2, step / 2]), step)))
    detail = network_detail(geometry, inverse, alignment, fuse, split) if with_detail else None
    return FaceFusion(alignment, True, detail)


def network_detail(geometry, inverse: np.ndarray, alignment: Alignment, fuse: FuseConfig, split: float) -> np.ndarray:
    """The network's relief above ``split`` on the crop's grid, in detail-map units (``DETAIL_METRES_PER_UNIT``).

    It fades in from the face's outline as seen by the camera, like the fusion, so the rim never moves."""
    heights = from_alignment_space(alignment.scale * inverse.astype(np.float64) + alignment.shift,
                                   fuse.camera_distance).astype(np.float32)
    mask = geometry.seen_region_mask(len(inverse))  # the prediction is on the crop's (texture's) grid
    relief = heights - masked_blur(heights, mask, split)
    return (detail_share(mask, fuse) * relief / DETAIL_METRES_PER_UNIT).astype(np.float32)


def alignment_meta(alignment: Alignment) -> dict:
    return {"scale": round(alignment.scale, 6), "shift": round(alignment.shift, 6),
            "residual_m": round(alignment.residual, 6), "inliers": round(alignment.inliers, 4),
            "usable": bool(alignment.usable)}
