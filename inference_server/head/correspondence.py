"""Where MediaPipe's 478 landmarks sit on the head model, and how the contour ones slide.

Most landmarks are fixed surface points (triangle + barycentrics). The face-oval points on the
cheeks and jaw are not: FaceMesh draws them near the face's outline, which moves over the skin as
the head turns. On the derivation's renders they are neither fixed anatomy nor the exact
silhouette (a pure silhouette rule placed them worse than fixed points: 5.2 vs 4.1 % of the eye
distance), so each gets one surface place per yaw bin, measured, and the fit blends the two bins
around its current yaw.

The table is derived by ``scripts/derive_head_landmarks.py`` and shipped as ``landmarks_ict.npz``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).with_name("landmarks_ict.npz")


@dataclass(frozen=True)
class LandmarkTable:
    triangle_vertices: np.ndarray          # (478, 3) int32 model vertices of each landmark's triangle
    bary: np.ndarray                       # (478, 3) float32 barycentrics in that triangle
    contour: np.ndarray                    # (K,) int32 landmarks whose place depends on the yaw
    contour_yaw: np.ndarray                # (B,) float32 yaw bins in degrees (ascending)
    contour_triangle_vertices: np.ndarray  # (K, B, 3) int32 triangle of each contour landmark per bin
    contour_bary: np.ndarray               # (K, B, 3) float32
    spread_mm: np.ndarray                  # (478,) float32 robust scatter of the derivation's hits

    def save(self, path: Path = TABLE_PATH) -> None:
        np.savez_compressed(path, **{key: getattr(self, key) for key in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path = TABLE_PATH) -> "LandmarkTable":
        with np.load(path) as data:
            return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    def fixed_points(self, vertices: np.ndarray) -> np.ndarray:
        """(478, 3) landmark points on a head with the model's topology (contour ones at their
        frontal place)."""
        return np.einsum("lk,lkd->ld", self.bary, vertices[self.triangle_vertices])

    def sampling(self, yaw_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """Vertex ids (478, 6) and weights (478, 6) that place every landmark on a head seen at
        ``yaw_deg``: ``points = (weights[..., None] * vertices[ids]).sum(1)``. Contour landmarks
        blend the two yaw bins around ``yaw_deg`` (clamped to the table's range)."""
        ids = np.concatenate([self.triangle_vertices, self.triangle_vertices], 1)
        weights = np.concatenate([self.bary, np.zeros_like(self.bary)], 1)
        yaw = float(np.clip(yaw_deg, self.contour_yaw[0], self.contour_yaw[-1]))
        upper = int(np.clip(np.searchsorted(self.contour_yaw, yaw), 1, len(self.contour_yaw) - 1))
        blend = (yaw - self.contour_yaw[upper - 1]) / (self.contour_yaw[upper] - self.contour_yaw[upper - 1])
        ids[self.contour] = np.concatenate([self.contour_triangle_vertices[:, upper - 1],
                                            self.contour_triangle_vertices[:, upper]], 1)
        weights[self.contour] = np.concatenate([(1 - blend) * self.contour_bary[:, upper - 1],
                                                blend * self.contour_bary[:, upper]], 1)
        return ids, weights.astype(np.float32)


def head_yaw_deg(rotation: np.ndarray, translation: np.ndarray) -> float:
    """Yaw of the head relative to the ray from the camera to it (not to the optical axis): positive
    when the nose turns toward image right, as in ``camera.head_rotation``."""
    to_camera = rotation.T @ (-np.asarray(translation, np.float64))
    return float(np.degrees(np.arctan2(-to_camera[0], to_camera[2])))
