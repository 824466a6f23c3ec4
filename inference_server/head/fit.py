"""Fit the morphable head to one face's FaceMesh landmarks: pose, focal length, identity, expression.

Maximum a posteriori by Gauss-Newton / Levenberg-Marquardt on the linear model: the landmarks are a
fixed linear function of the 153 shape coefficients, so each step needs the model only at the
~2k vertices the landmark table touches, and a handful of steps converge (hundreds of first-order
steps would cost far more). Terms: robust (Geman-McClure, by reweighting) 2D landmark residuals in
the photo's pixels, scaled by the eye distance so the priors weigh the same at any photo size;
MediaPipe's relative depth as a weak cue; identity coefficients ~ N(0, 1); expression weights in
[0, 1] with an L1 (sparsity) prior; a log-normal prior on the focal length unless it is given.
Pose lives in ``rotation``/``translation`` (camera frame: x right, y down, z forward); the shape is
the canonical head in the model's own frame. The terms themselves are ``objective.py``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import torch

from ..landmarks import FACE_OVAL, SURFACE_LANDMARKS
from .basis import ShapeBasis
from .camera import FRONTAL, Camera
from .correspondence import LandmarkTable, head_yaw_deg
from .model import HeadModel
from .objective import POSE_PARAMS, HeadFitConfig, Problem, State


@dataclass
class HeadFit:
    id_coeffs: np.ndarray          # (100,) float32
    exp_weights: np.ndarray        # (53,) float32 in [0, 1]
    rotation: np.ndarray           # (3, 3) camera-from-model
    translation: np.ndarray        # (3,) metres, camera frame
    focal: float                   # pixels
    principal: tuple[float, float]  # pixels
    image_size: tuple[int, int]    # (height, width)
    landmarks_fitted_px: np.ndarray  # (478, 2) the fitted head's landmarks in the photo
    residual_px: float             # median 2D landmark residual
    residual_eye_pct: float        # the same in % of the eye distance
    yaw_deg: float
    basis: ShapeBasis = field(repr=False, compare=False)

    @property
    def camera(self) -> Camera:
        """The photo's camera as fitted (e.g. for ``render.depth_map`` or ``render.overlay``)."""
        return Camera(self.focal, self.principal, self.image_size)

    @cached_property
    def canonical_vertices(self) -> np.ndarray:
        """(V, 3) float32 head in the model frame, pose-free; built on first use (a video's frames
        need only their weights and pose; building it took about a tenth of a frame's fit)."""
        coeffs = torch.from_numpy(np.concatenate([self.id_coeffs, self.exp_weights])).to(self.basis.device)
        return self.basis.vertices(coeffs).cpu().numpy()

    @cached_property
    def posed_vertices(self) -> np.ndarray:
        """(V, 3) float32 head in the camera frame, metres."""
        return (self.canonical_vertices @ self.rotation.T + self.translation).astype(np.float32)


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
        problems.append(Problem(basis, landmarks_px, default.principal, shared, default.focal,
                                 view.focal_px is not None, view.cues))
        rotation, translation = view.start_pose or rigid_pose(basis, landmarks_px, default.focal, default.principal)
        states.append(State(torch.tensor(rotation, dtype=torch.float32, device=device),
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

    def values(self, states: list[State]) -> torch.Tensor:
        """Parameter values aligned with the step vector (pose entries are increments: zero)."""
        device = states[0].coeffs.device
        return torch.cat([torch.zeros(POSE_PARAMS * self.views, device=device), states[0].coeffs[:self.identity]]
                         + [state.coeffs[self.identity:] for state in states])


def _yaws(states: list[State]) -> list[float]:
    return [head_yaw_deg(state.rotation.cpu().numpy(), state.translation.cpu().numpy()) for state in states]


def _optimise(problems: list[Problem], states: list[State], config: HeadFitConfig, identity_fixed: bool = False):
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
        current = 0.0   # the objective at ``states``, from the residuals linearised here (``Problem.cost_of``)
        for problem, state, point_basis, weight, index in zip(problems, states, bases, weights, layout.index):
            residual, jacobian = problem.linearise(state, point_basis, weight)
            hessian[index[:, None], index[None, :]] += jacobian.T @ jacobian
            gradient[index] += jacobian.T @ residual
            current += problem.cost_of(state, residual)
        gradient[layout.expression] += config.expression_l1

        def cost(candidates: list[State]) -> float:
            return sum(problem.cost(state, point_basis, weight)
                       for problem, state, point_basis, weight in zip(problems, candidates, bases, weights))

        for _ in range(4):
            damped = hessian + damping * torch.diag(torch.diagonal(hessian).clamp(min=1e-6))
            step = _bounded_step(damped, gradient, layout.values(states), free, layout.expression)
            candidates = [state.moved(step[index]) for state, index in zip(states, layout.index)]
            if cost(candidates) <= current:
                states, damping = candidates, max(damping / 3, 1e-7)
                break
            damping *= 10
    return states, bases


def _result(problem: Problem, state: State, landmark_basis, image_size, principal) -> HeadFit:
    coeffs = state.coeffs.cpu().numpy()
    n_id = problem.basis.identity_count
    id_coeffs, exp_weights = coeffs[:n_id], np.clip(coeffs[n_id:], 0, 1)
    rotation = state.rotation.cpu().numpy().astype(np.float64)
    translation = state.translation.cpu().numpy().astype(np.float64)
    pixels = problem.project(state, landmark_basis)[-1].cpu().numpy()[:problem.landmark_count]
    error = np.linalg.norm(pixels - problem.observed.cpu().numpy()[:problem.landmark_count], axis=1)
    eye = problem.sigma / problem.config.landmark_sigma
    return HeadFit(id_coeffs=id_coeffs.astype(np.float32), exp_weights=exp_weights.astype(np.float32),
                   rotation=rotation, translation=translation, focal=float(torch.exp(state.log_focal)),
                   principal=principal, image_size=tuple(image_size), landmarks_fitted_px=pixels,
                   residual_px=float(np.median(error)), residual_eye_pct=float(100 * np.median(error) / eye),
                   yaw_deg=head_yaw_deg(rotation, translation), basis=problem.basis)
