"""Several photos of one person -> one head: the joint fit against each photo fitted alone.

    .venv/bin/python benchmarks/multiview_eval.py [--subjects 8] [--renderer raster|cycles] [--yaws 0,35,70]

Subjects as in ``head_fit_eval.py`` (ICT-FaceKit identities with a few expressions, ``model`` and
``beyond`` kinds: the latter carry smooth shape no coefficients can reproduce), each rendered at
every yaw of ``--yaws`` with the same expression (one sitting), run through the real landmark chain
(MTCNN -> crop -> FaceMesh), then fitted: each photo alone (``fit_head``) and all photos together
(``fit_views``: one identity, a pose and expression per photo). Printed per kind: the unfitted mean
head's surface error, each single photo's, the per-subject oracle (each subject's luckiest photo), and
the joint fit's (scan-to-mesh on the face region after similarity alignment, mm). ``--renderer cycles``
renders with Blender's Cycles, not the project's rasteriser.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import (CAMERA_SIZE, LandmarkReader, cycles_renders, evaluation_model,  # noqa: E402
                                      make_subject, render_subject, shape_errors)


def sittings(model, count: int, yaws: list[float]) -> list[tuple[int, str, list]]:
    """(seed, kind, [subject at each yaw]): one identity and expression, the head turned."""
    chosen = []
    for seed in range(count):
        for kind in ("model", "beyond"):
            base = make_subject(model, 1000 + seed, kind == "beyond")
            chosen.append((seed, kind, [replace(base, pose=(float(yaw), 4.0, -3.0)) for yaw in yaws]))
    return chosen


def run(model, table, basis, reader, chosen, renderer: str) -> list[dict]:
    import torch

    from inference_server.head.fit import HeadFitConfig, View, fit_head, fit_views

    flat = [subject for *_, views in chosen for subject in views]
    images = iter(cycles_renders(model, flat) if renderer == "cycles" else [render_subject(model, s) for s in flat])
    rows, config, cpu = [], HeadFitConfig(), torch.device("cpu")
    for seed, kind, subjects in chosen:
        truth = subjects[0].canonical(model)
        row = {"subject": seed, "kind": kind, "mean_head": shape_errors(model, table, model.vertices, truth)["surface_mm"]}
        views = []
        for subject in subjects:
            rgb = next(images)
            try:
                landmarks = reader(rgb)
            except RuntimeError:
                row[f"yaw{subject.pose[0]:g}"] = float("nan")  # no face found at this yaw
                continue
            fit = fit_head(model, landmarks, CAMERA_SIZE, config, cpu, basis=basis)
            row[f"yaw{subject.pose[0]:g}"] = shape_errors(model, table, fit.canonical_vertices, truth)["surface_mm"]
            views.append(View(landmarks, CAMERA_SIZE))
        started = time.perf_counter()
        joint = fit_views(model, views, config, cpu, basis=basis)
        row["joint_ms"] = 1000 * (time.perf_counter() - started)
        row["views"] = len(views)
        row["joint"] = shape_errors(model, table, joint[0].canonical_vertices, truth)["surface_mm"]
        row["oracle"] = np.nanmin([v for k, v in row.items() if k.startswith("yaw")])
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def print_table(rows: list[dict], yaws: list[float]) -> None:
    """Per kind: the mean head, each single photo, the best single photo (the yaw whose fits are best on
    average), the per-subject oracle (each subject's luckiest photo, which no one can pick), the joint fit."""
    singles = [f"yaw{y:g}" for y in yaws]
    columns = ["mean_head"] + singles + ["oracle", "joint"]
    print("\nsurface error, mm (face region, similarity-aligned); mean over subjects")
    print(f"{'kind':8}" + "".join(f"{c:>11}" for c in columns) + "   joint vs best photo   joint vs mean head")
    for kind in ("model", "beyond"):
        chosen = [r for r in rows if r["kind"] == kind]
        means = {c: np.nanmean([r[c] for r in chosen]) for c in columns}
        best = min(singles, key=lambda c: means[c])
        print(f"{kind:8}" + "".join(f"{means[c]:11.2f}" for c in columns)
              + f"   {100 * (means['joint'] / means[best] - 1):+9.1f} % ({best:>6})"
              + f"   {100 * (means['joint'] / means['mean_head'] - 1):+17.1f} %")
    wins = sum(r["joint"] < r["oracle"] for r in rows)
    print(f"joint fit below the subject's luckiest single photo: {wins} of {len(rows)}; "
          f"joint fit time median {np.median([r['joint_ms'] for r in rows]):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--yaws", default="0,35,70", help="yaw of each photo in degrees (default %(default)s)")
    parser.add_argument("--renderer", choices=("raster", "cycles"), default="raster")
    args = parser.parse_args()
    import torch

    from inference_server.head.basis import ShapeBasis

    model, table = evaluation_model()
    yaws = [float(y) for y in args.yaws.split(",")]
    rows = run(model, table, ShapeBasis(model, table, torch.device("cpu")), LandmarkReader(),
               sittings(model, args.subjects, yaws), args.renderer)
    print_table(rows, yaws)


if __name__ == "__main__":
    main()
