"""A video's performance (the ``anim_*`` arrays of a head reply) -> keyframes at the scene's frame rate
(bpy-free, numpy only).

The video's frames rarely fall on the scene's: every scene frame inside a tracked stretch of the
video gets values interpolated between the two video frames around it (weights and location
linearly, rotation by normalised quaternion interpolation); scene frames inside a stretch where the
face was lost get no key, so Blender holds the last pose across it. Validated here because the
arrays come from a server.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..wire.axes import CAMERA_TO_BLENDER, MODEL_TO_BLENDER, quaternion
from .headdata import RIGID_TOLERANCE



@dataclass(frozen=True)
class Keys:
    frames: np.ndarray        # (N,) scene frame numbers (integers, as floats)
    weights: np.ndarray       # (N, E) shape-key values
    quaternions: np.ndarray   # (N, 4) w, x, y, z: the object's rotation
    locations: np.ndarray     # (N, 3) metres: the object's location relative to the first key's
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))  # the first key's location in the video's camera


def has_performance(arrays: Mapping) -> bool:
    return "anim_weights" in arrays


def performance_keys(arrays: Mapping, expression_count: int, scene_fps: float, first_frame: int = 1) -> Keys:
    """Keys for every scene frame the tracked video covers, the video's start at ``first_frame``."""
    times = np.asarray(arrays["anim_time"], np.float64)
    tracked = np.asarray(arrays["anim_tracked"]).astype(bool)
    weights = np.asarray(arrays["anim_weights"], np.float64)
    rotations = np.asarray(arrays["anim_rotation"], np.float64)
    translations = np.asarray(arrays["anim_translation"], np.float64)
    count = len(times)
    shapes = {"anim_tracked": (tracked, (count,)), "anim_weights": (weights, (count, expression_count)),
              "anim_rotation": (rotations, (count, 3, 3)), "anim_translation": (translations, (count, 3))}
    for name, (values, shape) in shapes.items():
        if values.shape != shape:
            raise ValueError(f"{name} must be {shape}, got {values.shape}")
    if times.ndim != 1 or not all(np.isfinite(v).all() for v in (times, weights, rotations, translations)):
        raise ValueError("the performance arrays must be finite, anim_time one-dimensional")
    if count > 1 and not (np.diff(times) > 0).all():
        raise ValueError("anim_time must increase")
    if not 1.0 <= scene_fps <= 1000.0:
        raise ValueError(f"scene frame rate {scene_fps} is outside 1..1000")
    rows = np.nonzero(tracked)[0]
    if len(rows) == 0:
        return Keys(np.zeros(0), np.zeros((0, expression_count)), np.zeros((0, 4)), np.zeros((0, 3)))
    ortho = np.abs(np.einsum("nij,nkj->nik", rotations[rows], rotations[rows]) - np.eye(3)).max()
    if ortho > RIGID_TOLERANCE:
        raise ValueError("anim_rotation must hold rotations")
    blender = np.einsum("ij,njk,lk->nil", CAMERA_TO_BLENDER, rotations, MODEL_TO_BLENDER)
    quaternions = _quaternions(blender)
    locations = translations @ CAMERA_TO_BLENDER.T
    start = times[0]
    scene_times = np.arange(np.ceil((times[rows[0]] - start) * scene_fps - 1e-6),
                            np.floor((times[rows[-1]] - start) * scene_fps + 1e-6) + 1) / scene_fps + start
    after = np.clip(np.searchsorted(times, scene_times, side="left"), 0, count - 1)
    before = np.clip(after - 1, 0, count - 1)
    exact = np.isclose(times[after], scene_times, atol=1e-6)
    before = np.where(exact, after, before)
    keep = tracked[before] & tracked[after]
    before, after, scene_times = before[keep], after[keep], scene_times[keep]
    span = times[after] - times[before]
    share = np.where(span > 0, (scene_times - times[before]) / np.where(span > 0, span, 1.0), 0.0)[:, None]
    # Quaternions q and -q are one rotation: blend each pair on the same side.
    sign = np.where((quaternions[before] * quaternions[after]).sum(1, keepdims=True) < 0, -1.0, 1.0)
    blended = (1 - share) * quaternions[before] + share * sign * quaternions[after]
    blended /= np.linalg.norm(blended, axis=1, keepdims=True)
    moved = (1 - share) * locations[before] + share * locations[after]
    frames = first_frame + np.round((scene_times - start) * scene_fps)
    return Keys(frames, (1 - share) * weights[before] + share * weights[after], _continuous(blended),
                moved - moved[0], moved[0])


def video_lens_mm(focal_px: float, width_px: int, sensor_mm: float = 36.0) -> float:
    """A Blender camera's focal length (mm, horizontal sensor fit) for a focal length in pixels."""
    if not (focal_px > 0 and width_px > 0):
        raise ValueError(f"focal length {focal_px} px and width {width_px} px must be positive")
    return float(focal_px * sensor_mm / width_px)


def _quaternions(rotations: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations -> (N, 4) unit quaternions w, x, y, z (Blender's order; ``quaternion`` gives x, y, z, w)."""
    return np.array([np.roll(quaternion(m), 1) for m in rotations]).reshape(-1, 4)


def _continuous(quaternions: np.ndarray) -> np.ndarray:
    """Flip signs so neighbouring keys lie on the same side (Blender interpolates the components)."""
    out = quaternions.copy()
    for n in range(1, len(out)):
        if (out[n] * out[n - 1]).sum() < 0:
            out[n] = -out[n]
    return out
