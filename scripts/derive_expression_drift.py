"""Measure how FaceMesh's points slide over the skin under each expression; add it to the landmark table.

    PYTHONPATH=. .venv/bin/python scripts/derive_expression_drift.py [--identities 3] [--yaws=-20,0,20]
                 [--expressions jawOpen] [--offsets CACHE.npz] [--table inference_server/head/landmarks_ict.npz]

Run after ``derive_head_landmarks.py`` (which writes the table without drift). The table fixes each
landmark to a surface point, but under some expressions FaceMesh's point moves over the skin: raising
the inner brows lifts FaceMesh's whole brow, so the fit read browInnerUp as browOuterUp; the lower
inner-lip points follow jawOpen while their table points sit on the upper lip. Measured here: the mean
head and random identities are rendered with each expression alone (two weights, several yaws, the
table derivation's camera and renderer), every FaceMesh point is traced back to the surface under it,
and its offset from the table point (relative to the same head's neutral render) is fitted per unit
weight. The drift of one landmark under one expression is the median over identities, yaws and the
mirrored samples, kept only where it exceeds ``--threshold`` standard errors; the fit adds it to the
expression columns of the landmark basis (``ShapeBasis.landmarks``).

Only ``--expressions`` keep their drift: by default jawOpen alone. The shipped table was made with the
defaults (963 renders, about 5 min on 2 cores). On benchmarks/video_eval.py it raised the jaw's
correlation on every subject tried and left the other curves about as they were. The other drifts were
tried and left out: the eye expressions' broke the blinks (0.94-0.98 to 0.54-0.70; their drift at the
iris and lid points competes with the blink's own); all the non-eye ones cut the jaw's gain (other mouth
shapes took over part of the opening); the brows' raised the brows' correlation on three subjects with
this measurement (0.62 to 0.73 on average) but lowered it with a larger one (5 identities, yaws to 30 deg:
0.54), so it is not trusted.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import shared_model_path  # noqa: E402
from inference_server.head import render  # noqa: E402
from inference_server.head.camera import head_rotation  # noqa: E402
from inference_server.head.correspondence import TABLE_PATH, LandmarkTable  # noqa: E402
from inference_server.head.model import HeadModel  # noqa: E402
from scripts.derive_head_landmarks import (CAMERA, DISTANCE_M, landmark_surface, mirror_pairs,  # noqa: E402
                                          trace_landmarks)

WEIGHTS = (0.35, 0.7)            # each expression is rendered alone at these weights


def measure_offsets(model: HeadModel, table: LandmarkTable, identities: int, yaws: list[float]) -> np.ndarray:
    """(identity, yaw, weight (0 = neutral), expression, 478, 3) offsets of FaceMesh's traced points
    from the table's points, metres in the model frame; NaN where FaceMesh missed."""
    from inference_server.detection import FaceDetector
    from inference_server.head.photo_landmarks import locate_all
    from inference_server.landmarks import LandmarkModel

    detector, landmarker = FaceDetector(torch.device("cpu")), LandmarkModel()
    drawn = torch.from_numpy(render.drawn_faces(model)).long()
    surface = torch.from_numpy(landmark_surface(model)).long()
    colours = torch.from_numpy(render.vertex_colours(model))
    count = len(model.exp_names)
    offsets = np.full((identities, len(yaws), len(WEIGHTS) + 1, count, 478, 3), np.nan, np.float32)
    rng = np.random.default_rng(123)            # other identities than the table derivation's (seed 7)
    started = time.monotonic()
    for i in range(identities):
        coeffs = np.zeros(100, np.float32) if i == 0 else 0.8 * rng.standard_normal(100).astype(np.float32)
        for y, yaw in enumerate(yaws):
            rotation = head_rotation(yaw, 0.0, 0.0)
            jobs = [(0, None)] + [(k + 1, e) for k in range(len(WEIGHTS)) for e in range(count)]
            for k, expression in jobs:
                weights = np.zeros(count, np.float32)
                if expression is not None:
                    weights[expression] = WEIGHTS[k - 1]
                vertices = model.shape(coeffs, weights).astype(np.float64)
                cam = torch.from_numpy((vertices @ rotation.T + [0.0, 0.02, DISTANCE_M]).astype(np.float32))
                rgb, _ = render.render_shaded(cam, drawn, colours, CAMERA)
                found = locate_all(rgb, detector, landmarker)
                if not found:
                    print(f"identity {i} yaw {yaw} expression {expression}: no landmarks", flush=True)
                    continue
                offset = trace_landmarks(found[0], cam, vertices, surface) - table.points(vertices, yaw)
                offsets[i, y, k, slice(None) if expression is None else expression] = offset
            print(f"identity {i} yaw {yaw:+.0f}: {time.monotonic() - started:.0f} s", flush=True)
    return offsets


def symmetric(yaws: list[float]) -> bool:
    """Whether the list read backwards is its own negative: the mirrored samples take each yaw's opposite."""
    return bool(np.allclose(yaws, -np.asarray(yaws, np.float64)[::-1]))


def estimate_drift(offsets: np.ndarray, yaws: list[float], names: list[str], mirror: np.ndarray,
                   threshold: float) -> np.ndarray:
    """(478, E, 3) drift per unit weight: slope through the origin per identity and yaw, pooled with the
    mirrored samples (landmark and expression swapped left/right, x and yaw flipped), median, kept where
    its size exceeds ``threshold`` standard errors (robust, mirrored samples counted as dependent)."""
    if not symmetric(yaws):
        raise ValueError(f"yaws must be symmetric about 0, got {yaws}")
    amps = np.asarray(WEIGHTS)
    delta = offsets[:, :, 1:].astype(np.float64) - offsets[:, :, :1]                     # (I, Y, A, E, L, 3)
    slope = np.einsum("a,iyaeld->iyeld", amps, delta) / (amps ** 2).sum()
    swap = [names.index(n[:-2] + ("_R" if n.endswith("_L") else "_L")) if n[-2:] in ("_L", "_R") else e
            for e, n in enumerate(names)]
    mirrored = slope[:, ::-1][:, :, swap][:, :, :, mirror] * [-1.0, 1.0, 1.0]
    samples = np.concatenate([slope, mirrored]).reshape(-1, *slope.shape[2:])             # (S, E, L, 3)
    median = np.nanmedian(samples, 0)
    present = np.isfinite(samples[..., 0]).sum(0)
    scatter = np.nanmedian(np.abs(samples - median), 0) * 1.4826
    standard_error = np.linalg.norm(scatter, axis=-1) / np.sqrt(np.maximum(present / 2, 1))
    keep = (np.linalg.norm(median, axis=-1) > threshold * standard_error) & (present >= len(samples) // 2)
    return np.nan_to_num(np.where(keep[..., None], median, 0.0)).transpose(1, 0, 2).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=shared_model_path())
    parser.add_argument("--table", type=Path, default=TABLE_PATH, help="read, and rewritten with the drift")
    parser.add_argument("--identities", type=int, default=3)
    parser.add_argument("--yaws", default="-20,0,20", help="degrees, symmetric about 0")
    parser.add_argument("--threshold", type=float, default=3.0, help="standard errors a drift must exceed")
    parser.add_argument("--expressions", default="jawOpen",
                        help="comma-separated name prefixes of the expressions that keep their drift")
    parser.add_argument("--offsets", type=Path, help="cache of the measured offsets (.npz): reused when it exists")
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        model = HeadModel.load(args.model)
        table = dataclasses.replace(LandmarkTable.load(args.table), expression_drift=None)
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"error: {exc}")
    yaws = [float(y) for y in args.yaws.split(",")]
    if not symmetric(yaws):
        sys.exit(f"error: --yaws must be symmetric about 0 (e.g. -20,0,20), got {args.yaws}")
    if args.offsets and args.offsets.exists():
        with np.load(args.offsets) as cached:
            offsets, yaws = cached["offsets"], list(cached["yaws"])
    else:
        offsets = measure_offsets(model, table, args.identities, yaws)
        if args.offsets:
            np.savez_compressed(args.offsets, offsets=offsets, yaws=np.asarray(yaws))
    names = list(model.exp_names)
    vertices = model.vertices.astype(np.float64)
    mirror = mirror_pairs(np.stack([table.points(vertices, yaw) for yaw in table.yaw_bins]))
    drift = estimate_drift(offsets, yaws, names, mirror, args.threshold)
    kept = tuple(args.expressions.split(","))
    drift[:, [e for e, name in enumerate(names) if not name.startswith(kept)]] = 0.0
    dataclasses.replace(table, expression_drift=drift).save(args.table)
    size = np.linalg.norm(drift, axis=-1) * 1000
    for e in [e for e in np.argsort(-size.max(0))[:8] if size[:, e].max() > 0]:
        print(f"{names[e]:18s} {int((size[:, e] > 0).sum()):3d} landmarks drift, largest "
              f"{size[:, e].max():5.1f} mm per unit weight (landmark {int(size[:, e].argmax())})")
    print(f"wrote {args.table} ({args.table.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
