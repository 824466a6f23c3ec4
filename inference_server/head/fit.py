"""Fit the morphable head to one face's FaceMesh landmarks: pose, focal length, identity, expression.

Maximum a posteriori by Gauss-Newton / Levenberg-Marquardt on the linear model: the landmarks are a
fixed linear function of the 153 shape coefficients, so each step needs the model only at the
~2k vertices the landmark table touches, and a handful of steps converge (hundreds of first-order
steps would cost far more). Terms: robust (Geman-McClure, by reweighting) 2D landmark residuals in
the photo's pixels, scaled by the eye distance so the priors weigh the same at any photo size;
MediaPipe's relative depth as a weak cue; identity coefficients ~ N(0, 1); expression weights in
[0, 1] with an L1 (sparsity) prior; a log-normal prior on the focal length unless it is given.
Pose lives in ``rotation``/``translation`` (camera frame: x right, y down, z forward); the shape is
the canonical head in the model's own frame.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..landmarks import EYE_RINGS, FACE_OVAL, SURFACE_LANDMARKS
from .basis import ShapeBasis
from .camera import FRONTAL, Camera
from .correspondence import LandmarkTable, head_yaw_deg
from .model import HeadModel

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
    # held-out renders (seeds 100-102) with the shipped network: its correspondences help (weight 1
    # best of 0.05-3); its nearness (median error ~2.9 crop px) and its identity (no better than the
    # mean head) made heads worse at every weight tried, so both stay off until a better checkpoint.
    dense_sigma: float = 0.06
    dense_weight: float = 1.0
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


@dataclass
class HeadFit:
    id_coeffs: np.ndarray          # (100,) float32
    exp_weights: np.ndarray        # (53,) float32 in [0, 1]
    rotation: np.ndarray           # (3, 3) camera-from-model
    translation: np.ndarray        # (3,) metres, camera frame
    focal: float                   # pixels
    principal: tuple[float, float]  # pixels
    image_size: tuple[int, int]    # (height, width)
    canonical_vertices: np.ndarray  # (V, 3) float32 model frame, pose-free
    posed_vertices: np.ndarray     # (V, 3) float32 camera frame, metres
    landmarks_fitted_px: np.ndarray  # (478, 2) the fitted head's landmarks in the photo
    residual_px: float             # median 2D landmark residual
    residual_eye_pct: float        # the same in % of the eye distance
    yaw_deg: float

    @property
    def camera(self) -> Camera:
        """The photo's camera as fitted (e.g. for ``render.depth_map`` or ``render.overlay``)."""
        return Camera(self.focal, self.principal, self.image_size)


def eye_distance(landmarks_px: np.ndarray) -> float:
    centres = [landmarks_px[list(ring), :2].mean(0) for ring in EYE_RINGS]
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
class _State:
    rotation: torch.Tensor    # (3, 3)
    translation: torch.Tensor  # (3,)
    log_focal: torch.Tensor   # ()
    coeffs: torch.Tensor      # (153,) identity then expression

    def moved(self, step: torch.Tensor) -> "_State":
        return _State(_rodrigues(step[:3]) @ self.rotation, self.translation + step[3:6],
                      self.log_focal + step[6], self.coeffs + step[POSE_PARAMS:])


class _Problem:
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
                                     * cues.weight_2d]).astype(np.float32)
            self.dense_basis = basis.points(cues.vertex)
        if cues is not None:
            centre[:basis.identity_count] = config.network_identity * cues.identity
        self.landmark_count = len(landmarks_px)
        self.outline = torch.as_tensor(FACE_OVAL, device=device)  # keeps its weight whatever its facing
        self.groups = torch.from_numpy(np.concatenate(groups)).to(device)
        self.group_count = int(self.groups.max()) + 1
        self.observed = torch.tensor(np.concatenate(observed), dtype=torch.float32, device=device)
        depth = np.concatenate(depth)
        self.observed_depth = self._centred(torch.tensor(depth, dtype=torch.float32, device=device))
        self.depth_scale = torch.tensor(np.sqrt(np.concatenate(depth_weight)), dtype=torch.float32, device=device)
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

    def project(self, state: _State, landmark_basis):
        mean, shape_basis = landmark_basis
        points = mean + shape_basis @ state.coeffs
        rotated = points @ state.rotation.T
        camera = rotated + state.translation
        focal = torch.exp(state.log_focal)
        pixels = focal * camera[:, :2] / camera[:, 2:] + self.principal
        return shape_basis, rotated, camera, focal, pixels

    def robust_weights(self, state: _State, point_basis, yaw: float) -> torch.Tensor:
        """Per-point weights: static, Geman-McClure by the current residual, and for the landmarks the
        surface's facing (FaceMesh guesses points on skin turned away from the camera; the oval is an
        outline by definition and keeps its weight)."""
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
        facing = ((-(normals * rays).sum(1) - low) / (high - low)).clamp(0.0, 1.0)
        facing[self.outline] = 1.0
        return torch.cat([weights[:count] * facing, weights[count:]])

    def linearise(self, state: _State, landmark_basis, weights: torch.Tensor, jacobian: bool = True):
        """Stacked residual vector r and Jacobian J (or None) of the objective 1/2 |r|^2 + L1 term."""
        cfg = self.config
        shape_basis, rotated, camera, focal, pixels = self.project(state, landmark_basis)
        scale = torch.sqrt(weights)[:, None] / self.sigma
        residual_2d = (pixels - self.observed) * scale
        mean_z = camera[:, 2].mean()
        predicted_depth = -(focal / mean_z) * self._centred(camera[:, 2])
        depth_scale = self.depth_scale / self.sigma
        rows = [residual_2d.reshape(-1), (predicted_depth - self.observed_depth) * depth_scale]
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
        jac_z = -(focal / mean_z) * self._centred(d_camera[:, 2])
        jac_z[:, 6] = predicted_depth
        jacobians = [jac_2d.reshape(-1, jac_2d.shape[-1]), jac_z * depth_scale[:, None]]
        return torch.cat(rows + prior_rows), torch.cat(jacobians + prior_jac)

    def _priors(self, state: _State, params: int):
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

    def cost(self, state: _State, landmark_basis, weights: torch.Tensor) -> float:
        residual, _ = self.linearise(state, landmark_basis, weights, jacobian=False)
        return float(0.5 * (residual ** 2).sum() + self.config.expression_l1 * state.coeffs[self.expression].sum())


def _bounded_step(hessian: torch.Tensor, gradient: torch.Tensor, values: torch.Tensor, free: torch.Tensor,
                  bounded: slice) -> torch.Tensor:
    """Minimise 1/2 d'Hd + g'd over the ``free`` parameters with values[bounded] + d in [0, 1]
    (a few active-set rounds: clamp what leaves the box, re-solve the rest)."""
    hessian, gradient = hessian.double(), gradient.double()
    low, high = -values[bounded].double(), 1.0 - values[bounded].double()
    free = free.clone()
    at_bound = torch.zeros_like(free)
    at_bound[bounded] = ((low >= 0) & (gradient[bounded] > 0)) | ((high <= 0) & (gradient[bounded] < 0))
    free &= ~at_bound
    step = torch.zeros_like(gradient)
    for _ in range(6):
        index = torch.nonzero(free).squeeze(1)
        rhs = -(gradient[index] + hessian[index][:, ~free] @ step[~free])
        step[index] = torch.linalg.solve(hessian[index][:, index], rhs)
        clamped = torch.minimum(torch.maximum(step[bounded], low), high)
        moved = (clamped != step[bounded]) & free[bounded]
        if not moved.any():
            break
        step[bounded] = torch.where(moved, clamped, step[bounded])
        free[bounded] &= ~moved
    return step.float()


def rigid_pose(basis: ShapeBasis, landmarks_px: np.ndarray, focal: float, principal) -> tuple[np.ndarray, np.ndarray]:
    """Rigid pose of the mean head from the inner (non-oval) landmarks by PnP; frontal at a
    face-sized distance if PnP fails."""
    import cv2

    mean, _ = basis.landmarks(0.0)   # a frontal guess: PnP's pose error here is a few degrees
    fixed = np.setdiff1d(np.arange(SURFACE_LANDMARKS), FACE_OVAL)
    object_points = mean.cpu().numpy()[fixed].astype(np.float64)
    image_points = landmarks_px[fixed, :2].astype(np.float64)
    camera = np.array([[focal, 0, principal[0]], [0, focal, principal[1]], [0, 0, 1]])
    ok, rvec, tvec = cv2.solvePnP(object_points, image_points, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, tvec = cv2.solvePnP(object_points, image_points, camera, None, rvec, tvec, True,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
    if ok and tvec[2, 0] > 0:
        return cv2.Rodrigues(rvec)[0], tvec[:, 0]
    model_width = np.ptp(object_points[:, 0])
    centre = image_points.mean(0)
    distance = focal * model_width / max(np.ptp(image_points[:, 0]), 1.0)
    return FRONTAL.copy(), np.array([(centre[0] - principal[0]) * distance / focal,
                                     (centre[1] - principal[1]) * distance / focal, distance])


def fit_head(model: HeadModel, landmarks_px: np.ndarray, image_size: tuple[int, int],
             config: HeadFitConfig = HeadFitConfig(), device: torch.device = torch.device("cpu"),
             focal_px: float | None = None, table: LandmarkTable | None = None,
             basis: ShapeBasis | None = None, cues=None) -> HeadFit:
    """Fit the head to (478, 3) FaceMesh landmarks in photo pixels (z: MediaPipe's relative depth in
    the same pixel units, larger = nearer) of a photo of ``image_size`` (height, width). A known
    focal length (e.g. from EXIF, in pixels) is kept fixed. Pass ``basis`` to reuse the model's
    landmark basis across faces; ``cues`` (``inference_server.cues.predict.Cues``) adds the learned
    dense observations and the regressed identity."""
    view = View(landmarks_px, image_size, focal_px, cues)
    return fit_views(model, [view], config, device, table, basis)[0]


@dataclass(frozen=True)
class View:
    """One photo of the person: its face's landmarks (see ``fit_head``), size, known focal, cues, and
    optionally a starting pose (camera-from-model rotation, translation), e.g. the previous video frame's."""

    landmarks_px: np.ndarray
    image_size: tuple[int, int]
    focal_px: float | None = None
    cues: object = None
    start_pose: tuple[np.ndarray, np.ndarray] | None = None


def fit_views(model: HeadModel, views: list[View], config: HeadFitConfig = HeadFitConfig(),
              device: torch.device = torch.device("cpu"), table: LandmarkTable | None = None,
              basis: ShapeBasis | None = None, identity: np.ndarray | None = None) -> list[HeadFit]:
    """One person seen in several photos: one identity fitted to all of them jointly, and a pose,
    focal length and expression per photo (a single photo cannot fix depth; views from other sides
    can). The fits share ``id_coeffs``; each is posed in its own photo's camera. A given ``identity``
    is kept fixed (a video's frames once the person is known): only pose, focal and expression move."""
    if not views:
        raise ValueError("no views to fit")
    basis = basis or ShapeBasis(model, table or LandmarkTable.load(), device)
    # The identity prior is one term of the whole objective, not one per photo.
    shared = replace(config, identity_prior=config.identity_prior / len(views))
    start = torch.zeros(basis.deltas.shape[0], device=device)
    if identity is not None:
        start[:basis.identity_count] = torch.as_tensor(np.asarray(identity, np.float32), device=device)
    problems, states = [], []
    for view in views:
        landmarks_px = np.asarray(view.landmarks_px, np.float64)
        if landmarks_px.shape != (478, 3) or not np.isfinite(landmarks_px).all():
            raise ValueError(f"landmarks must be a finite (478, 3) array, got {landmarks_px.shape}")
        default = Camera.default_for(tuple(view.image_size), view.focal_px)
        problems.append(_Problem(basis, landmarks_px, default.principal, shared, default.focal,
                                 view.focal_px is not None, view.cues))
        rotation, translation = view.start_pose or rigid_pose(basis, landmarks_px, default.focal, default.principal)
        states.append(_State(torch.tensor(rotation, dtype=torch.float32, device=device),
                             torch.tensor(translation, dtype=torch.float32, device=device),
                             torch.tensor(np.log(default.focal), dtype=torch.float32, device=device),
                             start.clone()))
    states, bases = _optimise(problems, states, config, identity_fixed=identity is not None)
    return [_result(problem, state, point_basis, view.image_size, problem.principal_px)
            for problem, state, point_basis, view in zip(problems, states, bases, views)]


class _Layout:
    """Where each photo's parameters sit in the joint step: every photo's pose (rotation increment,
    translation, log focal), then the one identity, then every photo's expression (last, so the
    [0, 1] box is one slice). With one photo this is the single fit's own order."""

    def __init__(self, views: int, identity: int, expression: int, device: torch.device):
        self.views, self.identity = views, identity
        self.size = POSE_PARAMS * views + identity + expression * views
        self.expression = slice(POSE_PARAMS * views + identity, None)
        shared = np.arange(POSE_PARAMS * views, POSE_PARAMS * views + identity)
        self.index = [torch.from_numpy(np.concatenate([np.arange(POSE_PARAMS * v, POSE_PARAMS * (v + 1)), shared,
                                                       self.expression.start + expression * v + np.arange(expression)]))
                      .to(device) for v in range(views)]

    def values(self, states: list[_State]) -> torch.Tensor:
        """Parameter values aligned with the step vector (pose entries are increments: zero)."""
        device = states[0].coeffs.device
        return torch.cat([torch.zeros(POSE_PARAMS * self.views, device=device), states[0].coeffs[:self.identity]]
                         + [state.coeffs[self.identity:] for state in states])


def _yaws(states: list[_State]) -> list[float]:
    return [head_yaw_deg(state.rotation.cpu().numpy(), state.translation.cpu().numpy()) for state in states]


def _optimise(problems: list[_Problem], states: list[_State], config: HeadFitConfig, identity_fixed: bool = False):
    """Levenberg-Marquardt with reweighting over all photos at once; the landmarks' places follow
    each photo's current yaw."""
    device = states[0].coeffs.device
    layout = _Layout(len(states), problems[0].basis.identity_count,
                     states[0].coeffs.numel() - problems[0].basis.identity_count, device)
    damping = config.damping
    yaws = _yaws(states)
    bases = [problem.point_basis(yaw) for problem, yaw in zip(problems, yaws)]
    for iteration in range(config.iterations):
        if iteration:
            yaws = _yaws(states)
            bases = [problem.point_basis(yaw) for problem, yaw in zip(problems, yaws)]
        weights = [problem.robust_weights(state, point_basis, yaw)
                   for problem, state, point_basis, yaw in zip(problems, states, bases, yaws)]
        free = torch.ones(layout.size, dtype=torch.bool, device=device)
        if iteration < config.rigid_iterations:
            free[POSE_PARAMS * layout.views:] = False
        if identity_fixed:
            free[POSE_PARAMS * layout.views:layout.expression.start] = False
        for view, problem in enumerate(problems):
            if problem.focal_fixed:
                free[POSE_PARAMS * view + 6] = False
        hessian = torch.zeros(layout.size, layout.size, device=device)
        gradient = torch.zeros(layout.size, device=device)
        for problem, state, point_basis, weight, index in zip(problems, states, bases, weights, layout.index):
            residual, jacobian = problem.linearise(state, point_basis, weight)
            hessian[index[:, None], index[None, :]] += jacobian.T @ jacobian
            gradient[index] += jacobian.T @ residual
        gradient[layout.expression] += config.expression_l1

        def cost(candidates: list[_State]) -> float:
            return sum(problem.cost(state, point_basis, weight)
                       for problem, state, point_basis, weight in zip(problems, candidates, bases, weights))

        current = cost(states)
        for _ in range(4):
            damped = hessian + damping * torch.diag(torch.diagonal(hessian).clamp(min=1e-6))
            step = _bounded_step(damped, gradient, layout.values(states), free, layout.expression)
            candidates = [state.moved(step[index]) for state, index in zip(states, layout.index)]
            if cost(candidates) <= current:
                states, damping = candidates, max(damping / 3, 1e-7)
                break
            damping *= 10
    return states, bases


def _result(problem: _Problem, state: _State, landmark_basis, image_size, principal) -> HeadFit:
    coeffs = state.coeffs.cpu().numpy()
    n_id = problem.basis.identity_count
    id_coeffs, exp_weights = coeffs[:n_id], np.clip(coeffs[n_id:], 0, 1)
    rotation = state.rotation.cpu().numpy().astype(np.float64)
    translation = state.translation.cpu().numpy().astype(np.float64)
    clipped = torch.from_numpy(np.concatenate([id_coeffs, exp_weights])).to(problem.basis.device)
    canonical = problem.basis.vertices(clipped).cpu().numpy()
    pixels = problem.project(state, landmark_basis)[-1].cpu().numpy()[:problem.landmark_count]
    error = np.linalg.norm(pixels - problem.observed.cpu().numpy()[:problem.landmark_count], axis=1)
    eye = problem.sigma / problem.config.landmark_sigma
    return HeadFit(id_coeffs=id_coeffs.astype(np.float32), exp_weights=exp_weights.astype(np.float32),
                   rotation=rotation, translation=translation, focal=float(torch.exp(state.log_focal)),
                   principal=principal, image_size=tuple(image_size), canonical_vertices=canonical,
                   posed_vertices=(canonical @ rotation.T + translation).astype(np.float32),
                   landmarks_fitted_px=pixels, residual_px=float(np.median(error)),
                   residual_eye_pct=float(100 * np.median(error) / eye),
                   yaw_deg=head_yaw_deg(rotation, translation))
