"""A performance as the CSV facial-capture tools exchange (Epic's Live Link Face layout): ``Timecode``,
``BlendShapeCount``, ARKit's 52 blend shapes in ARKit's own order, head yaw/pitch/roll, eye angles.

The head model's 53 expressions are ARKit's 52 less ``tongueOut`` (which it does not have), with two of
ARKit's split in halves: ``browInnerUp`` and ``cheekPuff`` are written as the mean of their ``_L`` and
``_R`` halves, ``TongueOut`` as 0. ``_L``/``_R`` are the subject's left/right, as ARKit's Left/Right.
Head angles are radians (yaw: nose toward image right, i.e. the subject's left; pitch: chin up;
roll: in the image plane, as ``axes.head_angles_deg``); the eye angles are not estimated and are 0.
Numpy only: the CLI and the batch (inside Blender) both write it.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..wire.axes import head_angles_deg

ARKIT_SHAPES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawLeft", "JawRight", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthLeft", "MouthRight", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut")
ANGLES = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
          "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
COLUMNS = ("Timecode", "BlendShapeCount") + ARKIT_SHAPES + ANGLES


def model_name(arkit: str) -> str:
    """ARKit's 'MouthSmileLeft' -> the head model's 'mouthSmile_L' (the halves of the two split shapes
    share a stem: 'BrowInnerUp' -> 'browInnerUp')."""
    name = arkit[0].lower() + arkit[1:]
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if name.endswith(side) and name not in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):
            return name[: -len(side)] + suffix
    return name


def arkit_weights(exp_names: list[str], weights: np.ndarray) -> np.ndarray:
    """(F, 53) weights in the model's order -> (F, 52) in ARKit's."""
    index = {name: i for i, name in enumerate(exp_names)}
    columns = []
    for shape in ARKIT_SHAPES:
        name = model_name(shape)
        if name in index:
            columns.append(weights[:, index[name]])
        elif f"{name}_L" in index and f"{name}_R" in index:
            columns.append((weights[:, index[f"{name}_L"]] + weights[:, index[f"{name}_R"]]) / 2)
        else:
            columns.append(np.zeros(len(weights), weights.dtype))
    return np.stack(columns, 1)


def timecode(seconds: float, fps: float) -> str:
    """'HH:MM:SS:FF.mmm' (frames at ``fps``, then the fraction of a frame), from 00:00:00:00."""
    rate = max(int(round(fps)), 1)
    whole, part = divmod(max(seconds, 0.0), 1.0)
    frames = part * rate
    hours, rest = divmod(int(whole), 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}:{int(frames):02d}.{int(1000 * (frames % 1)):03d}"


def write_csv(path: str | Path, arrays, fps: float, exp_names: list[str]) -> int:
    """A head reply's performance (its ``anim_*`` arrays) as one row per tracked frame (untracked frames
    are left out: their times say where the gaps are); returns the number of rows."""
    tracked = np.asarray(arrays["anim_tracked"]).astype(bool)
    times = np.asarray(arrays["anim_time"], np.float64)
    rotations = np.asarray(arrays["anim_rotation"], np.float64)
    shapes = arkit_weights(exp_names, np.asarray(arrays["anim_weights"], np.float64))
    rows = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for frame in np.nonzero(tracked)[0]:
            angles = np.radians(head_angles_deg(rotations[frame]))
            writer.writerow([timecode(times[frame], fps), len(ARKIT_SHAPES) + len(ANGLES)]
                            + [f"{value:.6f}" for value in shapes[frame]] + [f"{value:.6f}" for value in angles]
                            + ["0.000000"] * 6)
            rows += 1
    return rows
