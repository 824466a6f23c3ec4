"""A person's performance in a video: one identity from a few well-spread sharp frames, then every
frame's expression weights and head pose with that identity held fixed.

Why this order: a single frame cannot fix depth, and fitting the identity per frame would let it
drift with each expression; the key frames (the sharpest frame in each yaw band, so the head is seen
from as many sides as the video shows) are fitted jointly by ``fit_views``. Every frame's landmarks are
smoothed over time by a centred Gaussian before the per-frame fits: the video is read in full before
anything is fitted, so smoothing needs no causal filter and adds no lag. Short losses of the face are
bridged by interpolating the landmarks; longer ones stay untracked (no keys there).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from ..head.basis import ShapeBasis
from ..head.correspondence import head_yaw_deg
from ..head.fit import HeadFit, HeadFitConfig, View, fit_views, rigid_pose
from ..head.camera import Camera
from ..head.model import HeadModel
from ..landmarks import EYE_RINGS
from .track import Located

YAW_EDGES = (-45.0, -25.0, -10.0, 10.0, 25.0, 45.0)  # 7 bands; the frontal band's frame comes first


@dataclass(frozen=True)
class VideoFitConfig:
    smooth_s: float = 0.033          # sigma of the landmarks' centred temporal Gaussian (one frame at 30 fps)
    max_gap_s: float = 0.5           # losses of the face up to this long are interpolated
    frame_iterations: int = 4        # per frame, warm-started from the previous frame's pose
    frame_rigid_iterations: int = 1
    # The frames' fits tie mirrored expressions together (``HeadFitConfig.expression_symmetry``): on a
    # synthetic video turning +-25 deg, 300 raised the far-side smile's correlation with the truth
    # from 0.36 to 0.87 and the brows' from 0.19 to 0.53, and left one-sided ones possible where seen.
    expression_symmetry: float = 300.0
    min_key_sharpness: float = 0.25  # key frames at least this fraction of the sharpest frame's sharpness
    # With the cues network every frame keeps this many of its dense cues (~20 KB, beside its 478
    # landmarks), read while tracking, for the identity's and the frames' fits.
    frame_cue_points: int = 750
    # The frames' cues without the mirror pass that steadies a photo's (``CuesPredictor``): on synthetic
    # videos (seeds 7 / 11) the brows' correlation with the truth went 0.89 / 0.72 -> 0.87 / 0.79, the
    # far smile 0.92 / 0.87 -> 0.93 / 0.90, and the capture 5.6 / 6.1 -> 7.7 / 6.9 frames/s.
    frame_mirror_average: bool = False
    # The first pass over the frames only finds the calm frames the identity is fitted to again: every
    # second frame is enough (five synthetic videos: the two passes 8.3-11.1 s -> 5.6-7.8 s a 120-frame
    # clip; curves within 0.02 of fitting every frame, the video's identity within 0.03 mm).
    first_pass_stride: int = 2
    # The frames' fits leave out dense cues within this distance of the eyelids (on the mean head): the
    # 64-px maps blur a blink, and with them the blinks' correlation with the truth fell from 0.95 to 0.88.
    eye_margin_m: float = 0.008
    # ``HeadFitConfig.dense_weight`` in the frames' fits. On synthetic videos (seeds 7 / 11) weight 1
    # lifted the brows' correlation with the truth from 0.68 / 0.42 to 0.91 / 0.89 but cost seed 7's
    # far smile 0.94 -> 0.86, and on Grace Hopper's moved photo (benchmarks/video_real.py) weight 0.5
    # let a still face's eyeLookUp_L jump by 1.0 (glasses). At 0.25: brows 0.89 / 0.72, smiles >= 0.87,
    # Grace Hopper's largest wobble 0.32 (0.35 without frame cues). Weight 1 only for the cues on the
    # brows and the forehead above them (within 2 cm of a brow landmark): brows 0.76 / 0.85 / 0.87 ->
    # 0.87 / 0.87 / 0.91 (seeds 11 / 7 / 21), 0.68 -> 0.79 at +-40 deg (seed 11), smiles within 0.01,
    # but on the moved real photos a still face's eyeLookUp wobbled about twice as much (Grace Hopper
    # 0.33 -> 0.67, astronaut 0.23 -> 0.31; also with the cues below the brows left out) and Grace
    # Hopper's mean rose 0.2 -> 0.8; at 0.5 her wobble was 0.67 too: not taken (2026-12-07,
    # video_eval.py / video_real.py --set).
    frame_dense_weight: float = 0.25
    # ``HeadFitConfig.dense_confidence`` in all of a video's fits: the cues weighted by the network's
    # confidence, which is highest in the face's middle, where the expressions are. Every cue alike (a
    # photo's setting) cost the brows 0.85 / 0.79 -> 0.69 / 0.71 (seeds 7 / 11) with it in the frames'
    # fits, and at +-40 deg 0.82 -> 0.65 with it in the identity's alone.
    dense_confidence: float = 1.0


@dataclass
class KeyFrame:
    index: int
    rgb: np.ndarray
    located: Located
    yaw_deg: float


@dataclass
class KeyFrames:
    """The sharpest frame seen in each yaw band: one picture per band is all the video's frames cost."""

    bands: dict[int, KeyFrame] = field(default_factory=dict)
    sharpest: float = 0.0

    def offer(self, index: int, rgb: np.ndarray, located: Located, yaw_deg: float) -> None:
        band = int(np.searchsorted(YAW_EDGES, yaw_deg))
        self.sharpest = max(self.sharpest, located.sharpness)
        held = self.bands.get(band)
        if held is None or located.sharpness > held.located.sharpness:
            self.bands[band] = KeyFrame(index, rgb.copy(), located, yaw_deg)

    def chosen(self, min_fraction: float) -> list[KeyFrame]:
        """Bands' frames that are sharp enough, the most frontal first (the head is posed as it shows)."""
        frames = [frame for frame in self.bands.values() if frame.located.sharpness >= min_fraction * self.sharpest]
        return sorted(frames, key=lambda frame: abs(frame.yaw_deg))


@dataclass
class Track:
    """Every frame's landmarks (NaN where the face was not found) and times, as read."""

    frame_index: list[int] = field(default_factory=list)
    time_s: list[float] = field(default_factory=list)
    landmarks: list[np.ndarray] = field(default_factory=list)   # (478, 3) float32 each
    cues: list = field(default_factory=list)   # the cues network's thinned ``Cues`` per frame, or None
    detections: int = 0

    def add(self, index: int, time_s: float, located: Located | None, cues=None) -> None:
        self.frame_index.append(index)
        self.time_s.append(time_s)
        self.landmarks.append(np.full((478, 3), np.nan, np.float32) if located is None
                              else located.landmarks_px.astype(np.float32))
        self.cues.append(cues)
        self.detections += bool(located is not None and located.detected)

    def position(self, frame_index: int) -> int:
        """Where the video's frame ``frame_index`` is in the track."""
        return self.frame_index.index(frame_index)


def frame_yaw(basis: ShapeBasis, landmarks_px: np.ndarray, camera: Camera) -> float:
    """The head's yaw by a rigid fit of the mean head (cheap: for choosing key frames)."""
    rotation, translation = rigid_pose(basis, landmarks_px, camera.focal, camera.principal)
    return head_yaw_deg(rotation, translation)


def smooth_track(landmarks: np.ndarray, times: np.ndarray, config: VideoFitConfig) -> tuple[np.ndarray, np.ndarray]:
    """(F, 478, 3) landmarks with NaN rows -> gaps up to ``max_gap_s`` filled linearly, each tracked run
    smoothed by a centred Gaussian; returns the landmarks (NaN where untracked) and which frames are tracked."""
    found = np.isfinite(landmarks).all(axis=(1, 2))
    filled = landmarks.astype(np.float64).copy()
    tracked = found.copy()
    seen = np.nonzero(found)[0]
    for before, after in zip(seen[:-1], seen[1:]):
        if after - before > 1 and times[after] - times[before] <= config.max_gap_s:
            share = ((times[before + 1:after] - times[before]) / (times[after] - times[before]))[:, None, None]
            filled[before + 1:after] = (1 - share) * filled[before] + share * filled[after]
            tracked[before + 1:after] = True
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    sigma = config.smooth_s / max(step, 1e-6)
    smoothed = np.full_like(filled, np.nan)
    # Each tracked run is smoothed on its own: a frame next to a long gap takes nothing from across it.
    runs = np.cumsum(np.concatenate([[0], tracked[1:] != tracked[:-1]]))
    for run in np.unique(runs[tracked]):
        members = np.nonzero(runs == run)[0]
        smoothed[members] = (gaussian_filter1d(filled[members], sigma, axis=0, mode="nearest")
                             if sigma >= 0.3 else filled[members])
    return np.where(tracked[:, None, None], smoothed, np.nan), tracked


@dataclass
class Performance:
    """Per frame (tracked or not): source frame number, time, expression weights (53), and the head's
    camera-from-model rotation and translation (metres) in the video's camera."""

    frame_index: np.ndarray
    time_s: np.ndarray
    tracked: np.ndarray
    weights: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    fps: float
    focal_px: float
    image_size: tuple[int, int]
    key_frames: list[int]
    landmarks: np.ndarray | None = None  # (F, 478, 3) the smoothed landmarks the frames were fitted to

    def as_arrays(self) -> dict:
        return {"anim_frame": self.frame_index.astype(np.int32), "anim_time": self.time_s.astype(np.float64),
                "anim_tracked": self.tracked.astype(np.uint8), "anim_weights": self.weights.astype(np.float32),
                "anim_rotation": self.rotation.astype(np.float32), "anim_translation": self.translation.astype(np.float32)}


def fit_identity(model: HeadModel, basis: ShapeBasis, landmarks: list[np.ndarray], image_size, fit_config: HeadFitConfig,
                 device: torch.device, focal_px: float | None = None, cues: list | None = None) -> list[HeadFit]:
    """The person's one identity from some frames' landmarks (and the cues network's dense cues, one
    per frame, when given), jointly: each frame with its own pose and expression; one known focal
    length, or each its own."""
    cues = cues or [None] * len(landmarks)
    views = [View(np.asarray(marks, np.float64), image_size, focal_px, cue) for marks, cue in zip(landmarks, cues)]
    return fit_views(model, views, fit_config, device, basis=basis)


def restful_frames(performance: "Performance") -> list[int]:
    """Per yaw band, the tracked frame whose expressions are weakest: the frames the identity is fitted
    to again. Frames with raised brows or an open jaw teach the identity that face, and every other frame
    would then need negative expressions, which the weights' [0, 1] box forbids."""
    chosen = {}
    for frame in np.nonzero(performance.tracked)[0]:
        band = int(np.searchsorted(YAW_EDGES, head_yaw_deg(performance.rotation[frame], performance.translation[frame])))
        effort = float(performance.weights[frame].sum())
        if band not in chosen or effort < chosen[band][0]:
            chosen[band] = (effort, int(frame))
    return sorted(frame for _, frame in chosen.values())


def eyelid_free(model: HeadModel, basis: ShapeBasis, margin_m: float) -> np.ndarray:
    """(V,) bool: the model's vertices farther than ``margin_m`` from both eyes' lid landmarks, on the
    mean head."""
    from scipy.spatial import cKDTree

    lids = basis.table.points(model.vertices)[[index for ring in EYE_RINGS for index in ring]]
    return cKDTree(lids).query(model.vertices)[0] > margin_m


def every_nth_tracked(tracked: np.ndarray, stride: int) -> np.ndarray:
    """(F,) bool: the first tracked frame and every ``stride``-th tracked one after it, counted over
    tracked frames only (a gap does not shift the pick off the face)."""
    return tracked & ((np.cumsum(tracked) - 1) % stride == 0)


def fit_frames(model: HeadModel, basis: ShapeBasis, track: Track, identity: np.ndarray, focal_px: float,
               image_size, fit_config: HeadFitConfig, config: VideoFitConfig, device: torch.device,
               progress=None, stride: int = 1) -> Performance:
    """Each tracked frame's expression weights and pose with ``identity`` and the focal held fixed;
    with ``stride`` n only every n-th tracked frame (the others count as untracked). ``progress(done, total)``
    is called per frame (it may raise to cancel)."""
    times = np.asarray(track.time_s, np.float64)
    landmarks, tracked = smooth_track(np.stack(track.landmarks) if track.landmarks else np.zeros((0, 478, 3)),
                                      times, config)
    count = len(times)
    weights = np.zeros((count, len(model.exp_names)), np.float32)
    rotation = np.tile(np.eye(3), (count, 1, 1))
    translation = np.zeros((count, 3))
    frame_config = replace(fit_config, iterations=config.frame_iterations,
                           rigid_iterations=config.frame_rigid_iterations,
                           expression_symmetry=config.expression_symmetry, dense_weight=config.frame_dense_weight)
    away_from_eyes = eyelid_free(model, basis, config.eye_margin_m)
    pose = None
    fitted = every_nth_tracked(tracked, stride)
    for frame in range(count):
        if progress is not None:
            progress(frame, count)
        if not tracked[frame]:
            pose = None
        if not fitted[frame]:
            continue
        cues = track.cues[frame]
        if cues is not None:
            cues = cues.subset(away_from_eyes[cues.vertex])
        fit = fit_views(model, [View(landmarks[frame], image_size, focal_px, cues, start_pose=pose)], frame_config,
                        device, basis=basis, identity=identity)[0]
        weights[frame], rotation[frame], translation[frame] = fit.exp_weights, fit.rotation, fit.translation
        pose = (fit.rotation, fit.translation)
    step = np.median(np.diff(times)) if count > 1 else 0.0
    return Performance(np.asarray(track.frame_index), times, fitted, weights, rotation, translation,
                       float(1 / step) if step > 0 else 0.0, focal_px, tuple(image_size), [], landmarks)
