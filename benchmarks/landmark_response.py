"""How much of an expression FaceMesh's landmarks show: the observability of each expression from
landmarks alone.

    .venv/bin/python benchmarks/landmark_response.py [--subjects 3] [--amount 0.6] [--yaw 0,25]

For a few ICT-FaceKit identities (``head_fit_eval.py``'s subjects, at rest), each expression is rendered
at ``--amount`` and at rest by the project's rasteriser, both photos go through the real landmark chain
(MTCNN -> crop -> FaceMesh), and the landmarks' motion is set against the motion of the same points on
the model (the ``LandmarkTable`` points projected by the true camera). Printed per expression: the
model's motion (mean over the points that move more than 1 px), FaceMesh's **gain** along it (the
least-squares slope of FaceMesh's motion on the model's: 1 shows all of it, 0 none) and the cosine
between the two motion fields. An expression FaceMesh does not show can only come from the cues
network's dense correspondences (or not at all).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import (CAMERA_FOCAL, CAMERA_SIZE, LandmarkReader, evaluation_model,  # noqa: E402
                                      make_subject, render_subject)

EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthFunnel", "eyeBlink_L", "eyeSquint_L", "browInnerUp_L",
               "browOuterUp_L", "browDown_L", "cheekPuff_L", "mouthPucker")


def projected(model, table, subject) -> np.ndarray:
    """(478, 2) the landmark table's points of ``subject`` in photo pixels."""
    posed = table.points(subject.canonical(model), subject.pose[0]) @ subject.rotation.T + subject.translation
    centre = np.array([CAMERA_SIZE[1] / 2, CAMERA_SIZE[0] / 2])
    return CAMERA_FOCAL * posed[:, :2] / posed[:, 2:3] + centre


def response(model, table, reader, subject, name: str, amount: float) -> tuple[float, float, float]:
    """(model motion px, FaceMesh gain, cosine) of ``name`` at ``amount`` against ``subject`` at rest."""
    weights = np.zeros(len(model.exp_names), np.float32)
    weights[model.exp_names.index(name)] = amount
    moved = replace(subject, exp_weights=weights)
    truth = projected(model, table, moved) - projected(model, table, subject)
    seen = reader(render_subject(model, moved))[:, :2] - reader(render_subject(model, subject))[:, :2]
    moving = np.linalg.norm(truth, axis=1) > 1.0
    if not moving.any():
        return 0.0, float("nan"), float("nan")
    truth, seen = truth[moving].ravel(), seen[moving].ravel()
    gain = float(truth @ seen / (truth @ truth))
    cosine = float(truth @ seen / (np.linalg.norm(truth) * np.linalg.norm(seen) + 1e-9))
    return float(np.linalg.norm(truth.reshape(-1, 2), axis=1).mean()), gain, cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--amount", type=float, default=0.6)
    parser.add_argument("--yaw", default="0,25", help="head yaws in degrees (default %(default)s)")
    args = parser.parse_args()
    model, table = evaluation_model()
    reader = LandmarkReader()
    yaws = [float(y) for y in args.yaw.split(",")]
    print(f"expression at {args.amount} against rest, {args.subjects} identities, yaw {yaws} deg: "
          "model motion (px, moving points), FaceMesh gain along it, cosine")
    for name in EXPRESSIONS:
        rows = []
        for seed in range(args.subjects):
            base = make_subject(model, 11 + seed, False)
            base = replace(base, exp_weights=np.zeros_like(base.exp_weights))
            for yaw in yaws:
                try:
                    rows.append(response(model, table, reader, replace(base, pose=(yaw, 0.0, 0.0)), name, args.amount))
                except RuntimeError:
                    continue
        motion, gain, cosine = np.nanmean(np.array(rows), axis=0) if rows else (np.nan,) * 3
        print(f"  {name:16s} motion {motion:5.1f} px   gain {gain:5.2f}   cosine {cosine:5.2f}   ({len(rows)} photos)",
              flush=True)


if __name__ == "__main__":
    main()
