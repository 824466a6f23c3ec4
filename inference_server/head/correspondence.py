"""Where MediaPipe's 478 landmarks sit on the head model, as a function of the head's yaw.

FaceMesh does not put its points on fixed anatomy: the face-oval points follow the outline of
the face, which moves over the skin as the head turns, and points near the nose and the far eye
drift too. A pure silhouette rule for the oval placed them worse than fixed points on the
derivation's renders (5.2 vs 4.1 % of the eye distance), so the table is measured instead: for
each landmark and each yaw bin, the surface point (triangle + barycentrics) FaceMesh lands on, and
the fit blends the two bins around its current yaw. Compared with one fixed place per landmark
this cut the face-pose error on heads turned 30 deg from 4.5 to 2.4 deg (benchmarks/head_fit_eval.py).

The eyelid points are the exception to "on the skin": FaceMesh puts an upper lid's points a little
inside the lid's margin, where the ray under them meets the eyeball, and on the far eye of a turned
head further still (1.8 mm frontal, 2.7 mm at 40 deg). Their table places sit on the lid's skin, so they
follow a blink, and ``hit_offset`` carries them, per yaw bin, to where FaceMesh's hits lay; placed on
the skin alone, the fit read an open eye turned 40 deg as 0.13-0.28 closed (0.00-0.11 with the offset).

The table is derived by ``scripts/derive_head_landmarks.py`` and shipped as ``landmarks_ict.npz``.
FaceMesh's points also slide over the skin under some expressions (the lower inner lip follows the
jaw, while its table point sits on the upper lip, where the lips meet when shut):
``expression_drift`` holds that slide per unit weight, measured by
``scripts/derive_expression_drift.py`` and added to the expression columns of the fit's basis.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).with_name("landmarks_ict.npz")


@dataclass(frozen=True)
class LandmarkTable:
    yaw_bins: np.ndarray             # (B,) float32 degrees, ascending, symmetric about 0
    triangle_vertices: np.ndarray    # (478, B, 3) int32 model vertices of each landmark's triangle per bin
    bary: np.ndarray                 # (478, B, 3) float32 barycentrics in that triangle
    spread_mm: np.ndarray            # (478,) float32 robust scatter of the derivation's hits
    expression_drift: np.ndarray | None = None   # (478, E, 3) float32 metres per unit expression weight
    hit_offset: np.ndarray | None = None   # (478, B, 3) float32 metres from a lid point's place to its hits

    def save(self, path: Path = TABLE_PATH) -> None:
        arrays = {key: getattr(self, key) for key in self.__dataclass_fields__}
        np.savez_compressed(path, **{key: value for key, value in arrays.items() if value is not None})

    @classmethod
    def load(cls, path: Path = TABLE_PATH) -> "LandmarkTable":
        with np.load(path) as data:
            return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data.files})

    def blend(self, yaw_deg: float) -> tuple[int, float]:
        """The yaw bin at or above ``yaw_deg`` (clamped to the table's range; never the first) and the
        share of it in the blend with the bin below."""
        yaw = float(np.clip(yaw_deg, self.yaw_bins[0], self.yaw_bins[-1]))
        upper = int(np.clip(np.searchsorted(self.yaw_bins, yaw), 1, len(self.yaw_bins) - 1))
        return upper, (yaw - self.yaw_bins[upper - 1]) / (self.yaw_bins[upper] - self.yaw_bins[upper - 1])

    def points(self, vertices: np.ndarray, yaw_deg: float = 0.0) -> np.ndarray:
        """(478, 3) landmark points on a head with the model's topology, in the model's frame (the
        offsets are), as seen at ``yaw_deg``."""
        ids, weights = self.sampling(yaw_deg)
        return np.einsum("lk,lkd->ld", weights, vertices[ids]) + self.offset(yaw_deg)

    def offset(self, yaw_deg: float) -> np.ndarray:
        """(478, 3) ``hit_offset`` at ``yaw_deg`` (the two bins around it blended); zero without one."""
        if self.hit_offset is None:
            return np.zeros((self.bary.shape[0], 3), np.float32)
        upper, share = self.blend(yaw_deg)
        return (1 - share) * self.hit_offset[:, upper - 1] + share * self.hit_offset[:, upper]

    def sampling(self, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Vertex ids (478, 6) and weights (478, 6) placing every landmark on a head seen at
        ``yaw_deg``: the two yaw bins around it blended linearly (clamped to the table's range)."""
        upper, blend = self.blend(yaw_deg)
        ids = np.concatenate([self.triangle_vertices[:, upper - 1], self.triangle_vertices[:, upper]], 1)
        weights = np.concatenate([(1 - blend) * self.bary[:, upper - 1], blend * self.bary[:, upper]], 1)
        return ids, weights.astype(np.float32)


def head_yaw_deg(rotation: np.ndarray, translation: np.ndarray) -> float:
    """Yaw of the head relative to the ray from the camera to it (not to the optical axis): positive
    when the nose turns toward image right, as in ``camera.head_rotation``."""
    to_camera = rotation.T @ (-np.asarray(translation, np.float64))
    return float(np.degrees(np.arctan2(-to_camera[0], to_camera[2])))
