"""The cues network on a photo: the face crop in, the fit's dense observations out.

Each output pixel the network calls head becomes one observation: the model vertex it shows (the
skin vertex of the mean head nearest to the predicted correspondence), where it is in the photo,
its nearness in photo pixels, and two weights from the predicted Laplace scales. The identity
coefficients come along as the fit's prior mean.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import alignment
from ..head.symmetry import identity_mirror
from . import checkpoint
from .crop import INPUT_SIDE, OUTPUT_STRIDE, crop_transform, scale_of
from .network import NEARNESS_UNIT, mirror_maps
from .synth import COORD_CENTRE, COORD_SCALE

MAX_POINTS = 1500           # observations passed to the fit (a regular subsample of the mask)
SNAP_MM = 4.0               # a correspondence farther than this from the skin is not used
SKIN_PARTS = ("face", "head_neck")


@dataclass
class Cues:
    vertex: np.ndarray         # (N,) int64 model vertex each observation shows
    points_px: np.ndarray      # (N, 2) photo pixels
    nearness_px: np.ndarray    # (N,) photo pixels, larger = nearer, arbitrary zero
    weight_2d: np.ndarray      # (N,) relative confidence of the correspondence, mean 1
    weight_depth: np.ndarray   # (N,) relative confidence of the nearness, mean 1
    identity: np.ndarray       # (100,) predicted identity coefficients

    def subset(self, chosen: np.ndarray) -> "Cues":
        """The observations ``chosen`` (indices or a mask), the identity unchanged."""
        return Cues(self.vertex[chosen], self.points_px[chosen], self.nearness_px[chosen], self.weight_2d[chosen],
                    self.weight_depth[chosen], self.identity)

    def thinned(self, points: int) -> "Cues":
        """At most ``points`` observations, evenly spread over the map, compact dtypes; each kept one
        weighs for those dropped, so the cues weigh as much in a fit as before."""
        count = len(self.vertex)
        kept = self.subset(np.linspace(0, count - 1, min(points, count)).round().astype(int) if count
                           else np.zeros(0, int))
        share = count / max(len(kept.vertex), 1)
        return replace(kept, points_px=kept.points_px.astype(np.float32), nearness_px=kept.nearness_px.astype(np.float32),
                       weight_2d=(share * kept.weight_2d).astype(np.float32),
                       weight_depth=(share * kept.weight_depth).astype(np.float32))


def skin_vertices(model):
    """The skin vertices a correspondence may name, and a k-d tree of their mean-head positions."""
    from scipy.spatial import cKDTree

    skin = np.nonzero(np.isin(model.vertex_part, [model.part_names.index(p) for p in SKIN_PARTS]))[0]
    return skin, cKDTree(model.vertices[skin])


@torch.inference_mode()
def run_network(network, crop: np.ndarray, device: torch.device, mirror_average: bool) -> tuple[np.ndarray, torch.Tensor]:
    """The (7, S, S) maps of one (INPUT_SIDE, INPUT_SIDE, 3) crop and the raw identity outputs: one
    row, or two with ``mirror_average`` (the crop's, then its mirror image's, still mirrored: mapping
    it back needs the head model). The maps are the average of the crop's and its mirror image's
    mirrored back (correspondence x negated), so a mirrored photo gets exactly the mirrored maps."""
    image = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
    if mirror_average:
        image = torch.cat([image, image.flip(-1)])
    dense, identity = network(image.to(device))
    dense, identity = dense.float().cpu(), identity.float().cpu()
    if not mirror_average:
        return dense[0].numpy(), identity
    return ((dense[0] + mirror_maps(dense[1], x_channel=1)) / 2).numpy(), identity


class CuesPredictor:
    """A loaded network and the model's skin vertices; one per worker, reused for every face.

    ``mirror_average`` (``run_network``): the network also sees the crop's mirror image and the two
    answers are averaged (the identity's through ``identity_mirror``); a mirrored photo then gets
    exactly the mirrored cues. The two crops go through the network as one batch of 2."""

    def __init__(self, network, model, device: torch.device = torch.device("cpu"), mirror_average: bool = True,
                 path: Path | None = None):
        self.network, self.device, self.path = network.to(device).eval(), device, path
        self.skin_vertices, self.tree = skin_vertices(model)
        self.identity_mirror = torch.from_numpy(identity_mirror(model)) if mirror_average else None

    @classmethod
    def load(cls, path: Path, model, device: torch.device = torch.device("cpu"),
             mirror_average: bool = True) -> "CuesPredictor":
        return cls(checkpoint.load(path, device), model, device, mirror_average, path)

    def maps(self, crop: np.ndarray, mirror_average: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The network's (7, S, S) maps and (100,) identity for one crop, mirror-averaged as the
        predictor was built to (``mirror_average`` None) or as asked (True only if it was built so)."""
        average = self.identity_mirror is not None and mirror_average is not False
        dense, identities = run_network(self.network, crop, self.device, average)
        if not average:
            return dense, identities[0].numpy()
        return dense, ((identities[0] + self.identity_mirror @ identities[1]) / 2).numpy()

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, landmarks_px: np.ndarray, mirror_average: bool | None = None) -> Cues:
        """The face's dense cues; ``mirror_average`` False skips the mirror pass (half the cost: a
        video's frames, whose fits the neighbouring frames steady)."""
        to_crop = crop_transform(landmarks_px[:, :2])
        crop = alignment.warp(np.ascontiguousarray(rgb[..., :3]), to_crop, INPUT_SIDE)
        dense, identity = self.maps(crop, mirror_average)
        head = dense[6] > 0
        rows, cols = np.nonzero(head)
        if len(rows) > MAX_POINTS:
            keep = np.linspace(0, len(rows) - 1, MAX_POINTS).round().astype(int)
            rows, cols = rows[keep], cols[keep]
        coords = dense[1:4, rows, cols].T * COORD_SCALE + np.asarray(COORD_CENTRE)
        distance, nearest = self.tree.query(coords)
        near_skin = distance < SNAP_MM / 1000
        rows, cols, nearest = rows[near_skin], cols[near_skin], nearest[near_skin]
        crop_xy = (np.stack([cols, rows], 1) + 0.5) * OUTPUT_STRIDE
        photo_xy = alignment.apply(alignment.invert(to_crop), crop_xy)
        scale = scale_of(to_crop)
        weight_depth = np.exp(-2 * dense[4, rows, cols])
        weight_2d = np.exp(-2 * dense[5, rows, cols])
        return Cues(vertex=self.skin_vertices[nearest].astype(np.int64), points_px=photo_xy,
                    nearness_px=dense[0, rows, cols] * NEARNESS_UNIT / scale,
                    weight_2d=weight_2d / max(weight_2d.mean(), 1e-12) if len(rows) else weight_2d,
                    weight_depth=weight_depth / max(weight_depth.mean(), 1e-12) if len(rows) else weight_depth,
                    identity=identity)
