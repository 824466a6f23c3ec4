"""Several photos of one person -> one head: the joint fit against each photo fitted alone.

    .venv/bin/python benchmarks/multiview_eval.py [--subjects 8] [--renderer raster|cycles] [--yaws 0,35,70]
        [--cues [CKPT]] [--expressions]

Subjects as in ``head_fit_eval.py`` (ICT-FaceKit identities with a few expressions, ``model`` and
``beyond`` kinds: the latter carry smooth shape no coefficients can reproduce), each rendered at
every yaw of ``--yaws`` with the same expression (one sitting), run through the real landmark chain
(MTCNN -> crop -> FaceMesh), then fitted: each photo alone (``fit_head``) and all photos together
(``fit_views``: one identity, a pose and expression per photo). Printed per kind: the unfitted mean
head's surface error, each single photo's, the per-subject oracle (each subject's luckiest photo), and
the joint fit's (scan-to-mesh on the face region after similarity alignment, mm). ``--renderer cycles``
renders with Blender's Cycles, not the project's rasteriser. ``--cues`` fits every photo and the joint
head a second time with the cues network's dense correspondences (default: the shipped weights) and
prints that table too, on the same renders and landmarks. ``--expressions`` gives every photo of a
sitting its own expression (the first photo's, then fresh draws: a smile here, an open jaw there) and
scores every head by its identity alone, at rest, against the true identity at rest.
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


def sittings(model, count: int, yaws: list[float], expressions: bool = False) -> list[tuple[int, str, list]]:
    """(seed, kind, [subject at each yaw]): one identity, the head turned; one expression throughout, or
    with ``expressions`` each photo its own (drawn as ``make_subject`` draws them, from other seeds)."""
    chosen = []
    for seed in range(count):
        for kind in ("model", "beyond"):
            base = make_subject(model, 1000 + seed, kind == "beyond")
            faces = [base.exp_weights] * len(yaws)
            if expressions:
                faces[1:] = [make_subject(model, 5000 + 10 * seed + n, False).exp_weights for n in range(1, len(yaws))]
            chosen.append((seed, kind, [replace(base, pose=(float(yaw), 4.0, -3.0), exp_weights=face)
                                        for yaw, face in zip(yaws, faces)]))
    return chosen


def at_rest(model, fit) -> np.ndarray:
    """The fitted identity with no expression, in the model frame."""
    return model.shape(fit.id_coeffs, np.zeros(len(model.exp_names), np.float32))


def run(model, table, basis, reader, chosen, renderer: str, predictor=None, rest: bool = False) -> list[dict]:
    """One row per sitting: the mean head, each photo alone, the joint fit; with ``predictor`` the
    same again with its cues under keys prefixed ``net_``. With ``rest`` every head is scored as its
    identity at rest against the true identity at rest (photos whose expressions differ)."""
    import torch

    from inference_server.head.fit import HeadFitConfig, View, fit_head, fit_views

    flat = [subject for *_, views in chosen for subject in views]
    images = iter(cycles_renders(model, flat) if renderer == "cycles" else [render_subject(model, s) for s in flat])
    rows, config, cpu = [], HeadFitConfig(), torch.device("cpu")
    for seed, kind, subjects in chosen:
        truth = (replace(subjects[0], exp_weights=np.zeros_like(subjects[0].exp_weights)) if rest
                 else subjects[0]).canonical(model)

        def shape(fit) -> np.ndarray:
            return at_rest(model, fit) if rest else fit.canonical_vertices
        row = {"subject": seed, "kind": kind, "mean_head": shape_errors(model, table, model.vertices, truth)["surface_mm"]}
        prefixes = ("", "net_") if predictor else ("",)
        views = {prefix: [] for prefix in prefixes}
        for subject in subjects:
            rgb = next(images)
            try:
                landmarks = reader(rgb)
            except RuntimeError:
                for prefix in prefixes:
                    row[f"{prefix}yaw{subject.pose[0]:g}"] = float("nan")  # no face found at this yaw
                continue
            for prefix in prefixes:
                cues = predictor(rgb, landmarks) if prefix else None
                fit = fit_head(model, landmarks, CAMERA_SIZE, config, cpu, basis=basis, cues=cues)
                row[f"{prefix}yaw{subject.pose[0]:g}"] = shape_errors(model, table, shape(fit), truth)["surface_mm"]
                views[prefix].append(View(landmarks, CAMERA_SIZE, cues=cues))
        row["views"] = len(views[""])
        for prefix in prefixes:
            started = time.perf_counter()
            joint = fit_views(model, views[prefix], config, cpu, basis=basis)
            row[f"{prefix}joint_ms"] = 1000 * (time.perf_counter() - started)
            row[f"{prefix}joint"] = shape_errors(model, table, shape(joint[0]), truth)["surface_mm"]
            row[f"{prefix}oracle"] = np.nanmin([v for k, v in row.items() if k.startswith(f"{prefix}yaw")])
        rows.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def print_table(rows: list[dict], yaws: list[float], prefix: str = "") -> None:
    """Per kind: the mean head, each single photo, the best single photo (the yaw whose fits are best on
    average), the per-subject oracle (each subject's luckiest photo, which no one can pick), the joint fit
    (``prefix`` "net_": the fits with the cues network)."""
    singles = [f"{prefix}yaw{y:g}" for y in yaws]
    columns = ["mean_head"] + singles + [f"{prefix}oracle", f"{prefix}joint"]
    print(f"\nsurface error, mm (face region, similarity-aligned); mean over subjects; "
          f"{'landmarks + cues network' if prefix else 'landmarks'}")
    print(f"{'kind':8}" + "".join(f"{c:>11}" for c in columns) + "   joint vs best photo   joint vs mean head")
    for kind in ("model", "beyond"):
        chosen = [r for r in rows if r["kind"] == kind]
        means = {c: np.nanmean([r[c] for r in chosen]) for c in columns}
        best = min(singles, key=lambda c: means[c])
        joint = means[f"{prefix}joint"]
        print(f"{kind:8}" + "".join(f"{means[c]:11.2f}" for c in columns)
              + f"   {100 * (joint / means[best] - 1):+9.1f} % ({best.removeprefix(prefix):>6})"
              + f"   {100 * (joint / means['mean_head'] - 1):+17.1f} %")
    wins = sum(r[f"{prefix}joint"] < r[f"{prefix}oracle"] for r in rows)
    print(f"joint fit below the subject's luckiest single photo: {wins} of {len(rows)}; "
          f"joint fit time median {np.median([r[f'{prefix}joint_ms'] for r in rows]):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--yaws", default="0,35,70", help="yaw of each photo in degrees (default %(default)s)")
    parser.add_argument("--renderer", choices=("raster", "cycles"), default="raster")
    parser.add_argument("--cues", nargs="?", const="shipped", metavar="CKPT",
                        help="also fit with the cues network (default checkpoint: the shipped weights)")
    parser.add_argument("--expressions", action="store_true",
                        help="each photo its own expression; heads scored by their identity at rest")
    args = parser.parse_args()
    import torch

    from inference_server.head.basis import ShapeBasis

    model, table = evaluation_model()
    yaws = [float(y) for y in args.yaws.split(",")]
    predictor = None
    if args.cues is not None:
        from inference_server.cues import checkpoint
        from inference_server.cues.predict import CuesPredictor

        predictor = CuesPredictor.load(checkpoint.SHIPPED if args.cues == "shipped" else Path(args.cues), model)
    rows = run(model, table, ShapeBasis(model, table, torch.device("cpu")), LandmarkReader(),
               sittings(model, args.subjects, yaws, args.expressions), args.renderer, predictor, args.expressions)
    print_table(rows, yaws)
    if predictor:
        print_table(rows, yaws, "net_")


if __name__ == "__main__":
    main()
