"""The morphable head as torch tensors for the fit: the full head and its rows at the points observed."""
from __future__ import annotations

import numpy as np
import torch

from .correspondence import LandmarkTable
from .model import HeadModel


class ShapeBasis:
    """The model as torch tensors on ``device``: the full head (for the result) and its rows at
    the landmarks (for the fit). Build once per model and device, reuse for every face."""

    def __init__(self, model: HeadModel, table: LandmarkTable, device: torch.device):
        deltas = np.concatenate([model.id_deltas, model.exp_deltas])                         # (153, V, 3)
        self.device, self.table = device, table
        self.identity_count = model.id_deltas.shape[0]
        self.mean = torch.from_numpy(model.vertices.astype(np.float32)).to(device)           # (V, 3)
        self.normals = _vertex_normals(model.vertices, model.faces)                           # (V, 3) numpy
        self.deltas = torch.from_numpy(deltas.reshape(len(deltas), -1)).to(device).float()   # (153, 3V)
        drift = table.expression_drift            # FaceMesh's slide over the skin per unit expression
        if drift is not None and drift.shape != (table.bary.shape[0], model.exp_deltas.shape[0], 3):
            raise ValueError(f"the landmark table's expression drift has shape {drift.shape}; this head model "
                             f"has {model.exp_deltas.shape[0]} expressions")
        self.drift = None if drift is None else torch.from_numpy(drift.transpose(0, 2, 1).astype(np.float32)).to(device)
        self._bins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # yaw bin -> its landmark rows
        names = list(model.exp_names)
        # (left, right) expression indices of each mirrored pair: eyeBlink_L / eyeBlink_R ...
        self.expression_pairs = [(i, names.index(name[:-2] + "_R")) for i, name in enumerate(names)
                                 if name.endswith("_L") and name[:-2] + "_R" in names]

    def landmarks(self, yaw_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (478, 3) and basis (478, 3, 153) of the landmark points at this yaw: the two yaw bins
        around it blended (each bin's rows gathered once, then kept: the fit asks every iteration)."""
        upper, share = self.table.blend(yaw_deg)
        (low_mean, low_basis), (high_mean, high_basis) = self._bin(upper - 1), self._bin(upper)
        return low_mean + share * (high_mean - low_mean), low_basis + share * (high_basis - low_basis)

    def _bin(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._bins:
            ids = self.table.triangle_vertices[:, index]
            weights = torch.from_numpy(self.table.bary[:, index].astype(np.float32)).to(self.device)
            corners = [self.points(ids[:, k]) for k in range(ids.shape[1])]
            mean = sum(weights[:, k, None] * m for k, (m, _) in enumerate(corners))
            basis = sum(weights[:, k, None, None] * b for k, (_, b) in enumerate(corners))
            if self.drift is not None:
                basis[:, :, self.identity_count:] += self.drift
            if self.table.hit_offset is not None:
                mean = mean + torch.from_numpy(self.table.hit_offset[:, index]).to(self.device)
            self._bins[index] = mean, basis.contiguous()
        return self._bins[index]

    def landmark_normals(self, yaw_deg: float) -> torch.Tensor:
        """(478, 3) unit normals of the mean head at the landmark points at this yaw (model frame)."""
        ids, weights = self.table.sampling(yaw_deg)
        normals = np.einsum("lk,lkd->ld", weights, self.normals[ids])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-9)
        return torch.from_numpy(normals.astype(np.float32)).to(self.device)

    def points(self, vertex_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (N, 3) and basis (N, 3, 153) of the given vertices."""
        index = torch.from_numpy(np.asarray(vertex_ids, np.int64)).to(self.device)
        columns = (index[:, None] * 3 + torch.arange(3, device=self.device)).reshape(-1)
        rows = self.deltas[:, columns].reshape(-1, len(index), 3).permute(1, 2, 0)
        return self.mean[index], rows.contiguous()

    def vertices(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(V, 3) head for stacked identity + expression coefficients."""
        return self.mean + (coeffs @ self.deltas).reshape(-1, 3)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    corners = vertices[faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # area-weighted
    normals = np.zeros_like(vertices, dtype=np.float64)
    for k in range(faces.shape[1]):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
