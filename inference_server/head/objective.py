"""The fit's objective for one photo: residuals and Jacobian of the MAP terms (landmarks, dense cues,
depth, priors) at a parameter state, and the state's update. ``fit.py`` runs the optimisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..landmarks import EYE_RINGS, FACE_OVAL, eye_centres
from .basis import ShapeBasis

IRIS = np.arange(468, 478)
POSE_PARAMS = 7          # rotation increment (3), translation (3), log focal (1)


@dataclass(frozen=True)
class HeadFitConfig:
    """Weights of the MAP fit. Residuals are in units of ``landmark_sigma`` x eye distance."""

    landmark_sigma: float = 0.04      # landmark noise, fraction of the eye distance (FaceMesh on photos)
    robust_scale: float = 2.5         # Geman-McClure scale in sigmas: beyond it a landmark fades out
    oval_weight: float = 1.0          # face-oval points (their yaw-dependent places are measured)
    iris_weight: float = 0.3          # the model's gaze is only what its expression shapes allow
    # MediaPipe's relative z, relative to the 2D terms. Off by default: on renders with known depth
    # it correlates 0.98 with the truth for frontal faces but only 0.8 at 30 deg of yaw, and every
    # weight tried (0.003 - 0.3) made pose and shape worse (benchmarks/head_fit_eval.py).
    depth_weight: float = 0.0
    identity_prior: float = 1.0       # multiplies ||id_coeffs - centre||^2 (the model's N(0, 1))
    # Learned dense cues (``inference_server.cues``), when given: per-observation weights of the
    # correspondences (2D, noise ``dense_sigma`` x eye distance) and of the network's nearness, and
    # how far the identity prior's centre moves to the network's regressed coefficients. Tuned on
    # held-out renders (``head_fit_eval.py --first-seed 100 --subjects 12``, not the reported seeds),
    # average gain over the mean head of the four rows. With each cue weighted by its confidence, a
    # tighter sigma was the training renderer's gain only (our renders 21.7 / 24.5 / 25.3 % at 0.06 /
    # 0.04 / 0.03, Cycles 17.2 / 17.2 / 16.1 %). With every cue alike (the default below), 0.06 /
    # 0.045 / 0.035 give 24.1 / 25.8 / 26.2 % on our renders, 18.6 / 18.6 % on Cycles (0.06 / 0.045),
    # real photos' likeness_real ratio 6.10 / 6.68 / 6.20, but at 0.045 the half-size astronaut's head
    # moved 0.97 -> 1.45 mm and a side-lit astronaut's de-lit albedo grew lopsided (mirror-point
    # disagreement, 99th percentile, 0.89 -> 1.01; 1.05 at 0.04; tests/test_head_server.py): the
    # network reads harsh shading as shape, and trusting it more shows that. 0.05 keeps the albedo but
    # is Cycles-neutral too (held out 18.8 against 18.6 %), moves the half-size astronaut 0.97 -> 1.39
    # mm and a still real face's video wobble 0.33 -> 0.45: 0.06 stays (2026-12-07, README). Identity
    # prior 2 or network_identity 1 added < 0.7 points (confidence-weighted); the nearness (0.3, 1)
    # cost 3-15 % and a turned pose 2.5 deg: both stay off.
    dense_sigma: float = 0.06
    dense_weight: float = 1.0
    # How far each correspondence's weight follows the network's own confidence in it (its predicted
    # Laplace scale): 1 as predicted, 0 all alike. On 12 held-out subjects (seeds 100-111) the gain over
    # the mean head went 17.6 / 21.7 / 24.1 % at 2 / 1 / 0 on our renders. The confidence is not wrong
    # (its outer quarter of the face weighs 0.2-0.3 against 1.4-1.5 in the middle, where errors are
    # half as large), but the middle's errors are shared by neighbouring points and do not average out,
    # while the edges say most about the face's width and profile.
    dense_confidence: float = 0.0
    dense_depth_weight: float = 0.0
    network_identity: float = 0.0
    # Landmarks on skin facing the camera at a cosine below the first value are dropped, above the
    # second kept whole (a ramp between); (0, 0) turns this off.
    facing_ramp: tuple[float, float] = (0.05, 0.35)
    beyond_table_power: float = 4.0  # landmark weights x (40 deg / |yaw|)^this past the table's last bin
    expression_l1: float = 2.0        # multiplies sum(exp_weights): most expressions stay at zero
    expression_l2: float = 0.5        # keeps the expression block well conditioned
    # Multiplies sum (w_L - w_R)^2 over mirrored expression pairs: a side the camera sees badly (a
    # turned head's far eye) follows the side it sees. Off for photos; a video's frames use it.
    expression_symmetry: float = 0.0
    focal_log_sigma: float = 0.35     # prior on log(focal / default focal) when no focal is given
    iterations: int = 8
    rigid_iterations: int = 3         # first steps move only pose and focal (mean shape)
    damping: float = 1e-3             # Levenberg-Marquardt, relative to the Hessian's diagonal


def confidence_weights(weights: np.ndarray, power: float) -> np.ndarray:
    """``weights`` raised to ``power`` and rescaled to their own mean, so the observations weigh as
    much in all as before (thinned cues carry the dropped points' share in their weights)."""
    if power == 1.0 or not len(weights):
        return weights
    mean = float(weights.mean())
    raised = (weights / mean) ** power
    return mean * raised / raised.mean()


def eye_distance(landmarks_px: np.ndarray) -> float:
    centres = eye_centres(landmarks_px)
    return float(np.linalg.norm(centres[0] - centres[1]))


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    return torch.stack([torch.stack([zero, -v[..., 2], v[..., 1]], -1),
                        torch.stack([v[..., 2], zero, -v[..., 0]], -1),
                        torch.stack([-v[..., 1], v[..., 0], zero], -1)], -2)


def _rodrigues(omega: torch.Tensor) -> torch.Tensor:
    angle = torch.linalg.norm(omega)
    if float(angle) < 1e-12:
        return torch.eye(3, dtype=omega.dtype, device=omega.device)
    k = _skew(omega / angle)
    return torch.eye(3, dtype=omega.dtype, device=omega.device) + torch.sin(angle) * k + (1 - torch.cos(angle)) * k @ k


@dataclass
class State:
    rotation: torch.Tensor    # (3, 3)
    translation: torch.Tensor  # (3,)
    log_focal: torch.Tensor   # ()
    coeffs: torch.Tensor      # (153,) identity then expression

    def moved(self, step: torch.Tensor) -> "State":
        return State(_rodrigues(step[:3]) @ self.rotation, self.translation + step[3:6],
                      self.log_focal + step[6], self.coeffs + step[POSE_PARAMS:])


class Problem:
    """Residuals and Jacobian of the MAP objective for one face (all tensors on one device)."""

    def __init__(self, basis: ShapeBasis, landmarks_px: np.ndarray, principal, config: HeadFitConfig,
                 prior_focal: float, focal_fixed: bool, cues=None):
        device, self.config, self.basis = basis.device, config, basis
        static = np.ones(len(landmarks_px), np.float32)
        static[FACE_OVAL] = config.oval_weight
        static[IRIS] = config.iris_weight
        observed, depth, depth_weight = [landmarks_px[:, :2]], [landmarks_px[:, 2]], [np.full(len(static), config.depth_weight)]
        groups, centre = [np.zeros(len(static), np.int64)], np.zeros(basis.deltas.shape[0], np.float32)
        self.dense_basis = None
        if cues is not None and len(cues.vertex):
            # Dense observations follow the landmarks in every per-point array (group 1 for the depth shift).
            observed.append(cues.points_px)
            depth.append(cues.nearness_px)
            depth_weight.append(config.dense_depth_weight * cues.weight_depth)
            groups.append(np.ones(len(cues.vertex), np.int64))
            static = np.concatenate([static, config.dense_weight * (config.landmark_sigma / config.dense_sigma) ** 2
                                     * confidence_weights(cues.weight_2d, config.dense_confidence)]).astype(np.float32)
            self.dense_basis = basis.points(cues.vertex)
        if cues is not None:
            centre[:basis.identity_count] = config.network_identity * cues.identity
        self.landmark_count = len(landmarks_px)
        self.outline = torch.as_tensor(FACE_OVAL, device=device)  # keeps its weight whatever its facing
        self.eye_rings = torch.as_tensor(EYE_RINGS, device=device)
        self.groups = torch.from_numpy(np.concatenate(groups)).to(device)
        self.group_count = int(self.groups.max()) + 1
        self.observed = torch.tensor(np.concatenate(observed), dtype=torch.float32, device=device)
        depth = np.concatenate(depth)
        self.observed_depth = self._centred(torch.tensor(depth, dtype=torch.float32, device=device))
        self.depth_scale = torch.tensor(np.sqrt(np.concatenate(depth_weight)), dtype=torch.float32, device=device)
        self.depth_used = bool((self.depth_scale > 0).any())   # no depth term: its rows are all zero, skip them
        self.prior_centre = torch.from_numpy(centre).to(device)
        self.principal_px = tuple(principal)
        self.principal = torch.tensor(principal, dtype=torch.float32, device=device)
        self.sigma = config.landmark_sigma * eye_distance(landmarks_px)
        self.static_weight = torch.from_numpy(static).to(device)
        self.log_prior_focal = float(np.log(prior_focal))
        self.focal_fixed = focal_fixed
        self.expression = slice(POSE_PARAMS + basis.identity_count, None)

    def _centred(self, values: torch.Tensor) -> torch.Tensor:
        """Per-point values minus their group's mean (each depth source has its own zero)."""
        sums = torch.zeros((self.group_count,) + values.shape[1:], dtype=values.dtype, device=values.device)
        counts = torch.bincount(self.groups, minlength=self.group_count).clamp(min=1).to(values.dtype)
        means = sums.index_add_(0, self.groups, values) / counts.view(-1, *([1] * (values.dim() - 1)))
        return values - means[self.groups]

    def point_basis(self, yaw: float):
        """Mean and basis of every observed point: the landmarks at this yaw, then the dense ones."""
        mean, basis = self.basis.landmarks(yaw)
        if self.dense_basis is None:
            return mean, basis
        return torch.cat([mean, self.dense_basis[0]]), torch.cat([basis, self.dense_basis[1]])

    def project(self, state: State, landmark_basis):
        mean, shape_basis = landmark_basis
        points = mean + shape_basis @ state.coeffs
        rotated = points @ state.rotation.T
        camera = rotated + state.translation
        focal = torch.exp(state.log_focal)
        pixels = focal * camera[:, :2] / camera[:, 2:] + self.principal
        return shape_basis, rotated, camera, focal, pixels

    def robust_weights(self, state: State, point_basis, yaw: float) -> torch.Tensor:
        """Per-point weights: static, Geman-McClure by the current residual, and for the landmarks the
        surface's facing (FaceMesh guesses points on skin turned away from the camera). The oval is an
        outline by definition and keeps its weight. An eyelid point lies on the lid's margin, whose
        normal faces the eyeball, so it takes its whole eye's facing: the mean of its ring's normals."""
        _, _, camera, _, pixels = self.project(state, point_basis)
        error = torch.linalg.norm(pixels - self.observed, dim=1) / self.sigma
        weights = self.static_weight / (1 + (error / self.config.robust_scale) ** 2) ** 2
        beyond = abs(yaw) / float(self.basis.table.yaw_bins[-1])  # past the table's yaws its places drift
        if beyond > 1.0:
            weights = torch.cat([weights[:self.landmark_count] / beyond ** self.config.beyond_table_power,
                                 weights[self.landmark_count:]])
        low, high = self.config.facing_ramp
        if high <= low:
            return weights
        count = self.landmark_count
        normals = self.basis.landmark_normals(yaw) @ state.rotation.T
        rays = camera[:count] / torch.linalg.norm(camera[:count], dim=1, keepdim=True)
        eyes = torch.nn.functional.normalize(normals[self.eye_rings].mean(1), dim=1)          # (2, 3)
        cosines = -(normals * rays).sum(1)
        cosines[self.eye_rings] = -(eyes[:, None] * rays[self.eye_rings]).sum(2)
        facing = ((cosines - low) / (high - low)).clamp(0.0, 1.0)
        facing[self.outline] = 1.0
        return torch.cat([weights[:count] * facing, weights[count:]])

    def linearise(self, state: State, landmark_basis, weights: torch.Tensor, jacobian: bool = True):
        """Stacked residual vector r and Jacobian J (or None) of the objective 1/2 |r|^2 + L1 term."""
        shape_basis, rotated, camera, focal, pixels = self.project(state, landmark_basis)
        scale = torch.sqrt(weights)[:, None] / self.sigma
        residual_2d = (pixels - self.observed) * scale
        rows = [residual_2d.reshape(-1)]
        if self.depth_used:
            mean_z = camera[:, 2].mean()
            predicted_depth = -(focal / mean_z) * self._centred(camera[:, 2])
            depth_scale = self.depth_scale / self.sigma
            rows.append((predicted_depth - self.observed_depth) * depth_scale)
        prior_rows, prior_jac = self._priors(state, POSE_PARAMS + state.coeffs.numel())
        if not jacobian:
            return torch.cat(rows + prior_rows), None
        inverse_z = 1.0 / camera[:, 2]
        zeros = torch.zeros_like(inverse_z)
        d_pixel = focal * inverse_z[:, None, None] * torch.stack(
            [torch.stack([torch.ones_like(zeros), zeros, -camera[:, 0] * inverse_z], 1),
             torch.stack([zeros, torch.ones_like(zeros), -camera[:, 1] * inverse_z], 1)], 1)      # (L, 2, 3)
        d_camera = torch.cat([-_skew(rotated), torch.eye(3, device=camera.device).expand(len(camera), 3, 3),
                              torch.zeros(len(camera), 3, 1, device=camera.device),
                              torch.einsum("ij,ljk->lik", state.rotation, shape_basis)], 2)          # (L, 3, P)
        jac_2d = d_pixel @ d_camera
        jac_2d[:, :, 6] = pixels - self.principal
        jac_2d = jac_2d * scale[..., None]
        jacobians = [jac_2d.reshape(-1, jac_2d.shape[-1])]
        if self.depth_used:
            jac_z = -(focal / mean_z) * self._centred(d_camera[:, 2])
            jac_z[:, 6] = predicted_depth
            jacobians.append(jac_z * depth_scale[:, None])
        return torch.cat(rows + prior_rows), torch.cat(jacobians + prior_jac)

    def _priors(self, state: State, params: int):
        cfg, device, n_id = self.config, state.coeffs.device, self.basis.identity_count
        prior_weight = torch.zeros(params, device=device)
        prior_weight[POSE_PARAMS:POSE_PARAMS + n_id] = np.sqrt(cfg.identity_prior)
        prior_weight[self.expression] = np.sqrt(cfg.expression_l2)
        residual = prior_weight[POSE_PARAMS:] * (state.coeffs - self.prior_centre)
        jacobian = torch.diag(prior_weight)[POSE_PARAMS:]
        focal_row = torch.zeros(1, params, device=device)
        focal_row[0, 6] = 1.0 / cfg.focal_log_sigma
        focal_residual = ((state.log_focal - self.log_prior_focal) / cfg.focal_log_sigma).reshape(1)
        rows, jacobians = [residual, focal_residual], [jacobian, focal_row]
        if cfg.expression_symmetry > 0 and self.basis.expression_pairs:
            left, right = (torch.tensor(side, device=device) + n_id for side in zip(*self.basis.expression_pairs))
            weight = float(np.sqrt(cfg.expression_symmetry))
            rows.append(weight * (state.coeffs[left] - state.coeffs[right]))
            pair_rows = torch.zeros(len(left), params, device=device)
            pair_rows[torch.arange(len(left)), POSE_PARAMS + left] = weight
            pair_rows[torch.arange(len(left)), POSE_PARAMS + right] = -weight
            jacobians.append(pair_rows)
        return rows, jacobians

    def cost(self, state: State, landmark_basis, weights: torch.Tensor) -> float:
        residual, _ = self.linearise(state, landmark_basis, weights, jacobian=False)
        return self.cost_of(state, residual)

    def cost_of(self, state: State, residual: torch.Tensor) -> float:
        """The objective from ``linearise``'s residual at ``state`` (the L1 term is not a residual)."""
        return float(0.5 * (residual ** 2).sum() + self.config.expression_l1 * state.coeffs[self.expression].sum())
