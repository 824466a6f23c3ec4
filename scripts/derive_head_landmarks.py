"""Derive where MediaPipe's 478 landmarks sit on the ICT-FaceKit head: render, detect, back-project.

    PYTHONPATH=. .venv/bin/python scripts/derive_head_landmarks.py [--model NPZ] [--identities 6]
                 [--output inference_server/head/landmarks_ict.npz] [--save-renders DIR]

The mean head and random identities are rendered with the project's rasteriser (Lambert shading,
part colours) in several poses; the real landmark chain (MTCNN -> aligned crop -> FaceMesh) runs on
each render, and every landmark is traced back to the surface point under it. A landmark's place
is the median of its hits (mapped onto the mean head, which shares the topology), snapped to the
skin (the iris's points to the eyeball; an eyelid point keeps its offset from there to its hits).
FaceMesh's points drift over the skin as the head turns (the face oval most), so every landmark gets
one place per yaw bin, from the renders in that bin (pitch variants pooled). Left/right pairs are
averaged through the mirror, so the table is symmetric.
The table it writes has no expression drift: run ``scripts/derive_expression_drift.py`` after it.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import shared_model_path  # noqa: E402
from inference_server.head import render  # noqa: E402
from inference_server.head.camera import Camera, head_rotation  # noqa: E402
from inference_server.head.correspondence import TABLE_PATH, LandmarkTable  # noqa: E402
from inference_server.head.model import HeadModel  # noqa: E402
from inference_server.head.objective import IRIS  # noqa: E402
from inference_server.head.raster import project, rasterize  # noqa: E402
from inference_server.landmarks import EYE_RINGS  # noqa: E402

YAW_BINS = (-40, -25, -12, 0, 12, 25, 40)       # degrees; contour places are tabulated per bin
POSES = tuple((yaw, 0) for yaw in YAW_BINS) + ((0, -12), (0, 12), (-12, 6), (12, -6))   # (yaw, pitch)
CAMERA = Camera(focal=1600.0, principal=(320.0, 320.0), size=(640, 640))
DISTANCE_M = 0.9


SKIN_PARTS = ("face", "head_neck")


def landmark_surface(model: HeadModel) -> np.ndarray:
    """Triangles a landmark's ray may hit: drawn geometry without the eyelash cards."""
    faces = render.drawn_faces(model)
    lashes = model.part_names.index("eyelashes_left"), model.part_names.index("eyelashes_right")
    return faces[~np.isin(model.vertex_part[faces], lashes).any(1)]


def skin_surface(model: HeadModel) -> np.ndarray:
    """Triangles every landmark but the iris's is placed on. FaceMesh's eyelid points lie on the lid's
    margin, and the ray under an upper-lid point hits the eyeball just below it: placed there, the lid
    point would never follow a blink (the eyeball has no expression deltas)."""
    faces = render.drawn_faces(model)
    skin = [model.part_names.index(name) for name in SKIN_PARTS]
    return faces[np.isin(model.vertex_part[faces], skin).all(1)]


def views(model: HeadModel, identities: int):
    """(identity index, pose, canonical vertices, R) for every render."""
    rng = np.random.default_rng(7)
    for identity in range(identities):
        coeffs = np.zeros(100, np.float32) if identity == 0 else 0.8 * rng.standard_normal(100).astype(np.float32)
        vertices = model.shape(coeffs)
        for pose in POSES:
            yield identity, pose, vertices, head_rotation(*pose)


def backproject(points_px: np.ndarray, screen: torch.Tensor, faces: torch.Tensor, triangle: torch.Tensor):
    """Triangle id (-1 = miss) and perspective-correct barycentrics of the surface under each point."""
    cols = np.clip(np.floor(points_px[:, 0]).astype(int), 0, triangle.shape[1] - 1)
    rows = np.clip(np.floor(points_px[:, 1]).astype(int), 0, triangle.shape[0] - 1)
    tri = triangle[rows, cols].numpy()
    corners = screen[faces[np.maximum(tri, 0)]].numpy().astype(np.float64)       # (L, 3, 3)
    a, b, c = corners[:, 0, :2], corners[:, 1, :2], corners[:, 2, :2]
    matrix = np.stack([b - a, c - a], 2)                                          # (L, 2, 2)
    uv = np.linalg.solve(matrix + np.eye(2) * 1e-12, (points_px[:, :2] - a)[..., None])[..., 0]
    bary = np.clip(np.column_stack([1 - uv.sum(1), uv]), 0, None)
    bary = bary / corners[:, :, 2]                                                # perspective-correct
    return tri, bary / bary.sum(1, keepdims=True)


def trace_landmarks(landmarks_px: np.ndarray, cam: torch.Tensor, vertices: np.ndarray, surface: torch.Tensor):
    """(L, 3) point of ``vertices`` under each landmark of a render of ``cam`` (camera-space vertices)
    by ``CAMERA``: the ray traced back onto ``surface``'s triangles; NaN where it misses the head."""
    screen = project(cam, CAMERA.focal, CAMERA.principal)
    triangle = rasterize(screen, surface, CAMERA.size, render.FRONT_FACING).triangle
    tri, bary = backproject(landmarks_px, screen, surface, triangle)
    points = np.einsum("lk,lkd->ld", bary, vertices[surface.numpy()[np.maximum(tri, 0)]])
    points[tri < 0] = np.nan
    return points


def collect_hits(model: HeadModel, identities: int, save_renders: Path | None):
    """(renders, 478, 3) hit points mapped onto the mean head (NaN = miss) and each render's (yaw, pitch)."""
    from inference_server.detection import FaceDetector
    from inference_server.head.photo_landmarks import locate_all
    from inference_server.landmarks import LandmarkModel

    detector, landmarker = FaceDetector(torch.device("cpu")), LandmarkModel()
    drawn = torch.from_numpy(render.drawn_faces(model)).long()
    surface = torch.from_numpy(landmark_surface(model)).long()
    colours = torch.from_numpy(render.vertex_colours(model))
    mean = model.vertices.astype(np.float64)
    hits, poses = [], []
    for identity, pose, vertices, rotation in views(model, identities):
        print(f"identity {identity} pose {pose}", flush=True)
        cam = torch.from_numpy((vertices @ rotation.T + [0.0, 0.02, DISTANCE_M]).astype(np.float32))
        rgb, _ = render.render_shaded(cam, drawn, colours, CAMERA)
        found = locate_all(rgb, detector, landmarker)
        if save_renders:
            from PIL import Image
            save_renders.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(save_renders / f"id{identity}_yaw{pose[0]}_pitch{pose[1]}.png")
        if not found:
            print(f"identity {identity} pose {pose}: no landmarks", flush=True)
            continue
        hits.append(trace_landmarks(found[0], cam, mean, surface))
        poses.append(pose)
    return np.stack(hits), np.array(poses)


def snap_to_surface(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray):
    """Nearest surface point of each 3D point: (triangle vertices (L, 3), barycentrics (L, 3))."""
    corners = vertices[faces]                                              # (F, 3, 3)
    centroids = corners.mean(1)
    out_tri, out_bary = [], []
    for point in points:
        near = np.argsort(np.linalg.norm(centroids - point, axis=1))[:64]
        a, b, c = corners[near, 0], corners[near, 1], corners[near, 2]
        matrix = np.stack([b - a, c - a], 2)                               # (n, 3, 2)
        gram = np.einsum("nki,nkj->nij", matrix, matrix) + np.eye(2) * 1e-15
        rhs = np.einsum("nki,nk->ni", matrix, point - a)
        uv = np.linalg.solve(gram, rhs[..., None])[..., 0]
        bary = np.clip(np.column_stack([1 - uv.sum(1), uv]), 0, None)
        bary /= bary.sum(1, keepdims=True)
        distance = np.linalg.norm(np.einsum("nk,nkd->nd", bary, corners[near]) - point, axis=1)
        best = int(np.argmin(distance))
        out_tri.append(faces[near[best]])
        out_bary.append(bary[best])
    return np.array(out_tri, np.int32), np.array(out_bary, np.float32)


def mirror_pairs(by_yaw: np.ndarray) -> np.ndarray:
    """(L,) index of each landmark's mirror partner. Each landmark's places over all yaw bins are
    compared with every landmark's reflected places at the opposite yaw; an optimal assignment on
    that symmetric cost gives a one-to-one pairing (nearest neighbours alone are not)."""
    from scipy.optimize import linear_sum_assignment

    reflected = by_yaw[::-1] * [-1.0, 1.0, 1.0]
    cost = np.nanmean(np.linalg.norm(by_yaw[:, :, None] - reflected[:, None], axis=-1), axis=0)
    cost = np.nan_to_num(cost + cost.T, nan=1.0)
    return linear_sum_assignment(cost)[1]


def build_table(model: HeadModel, hits: np.ndarray, poses: np.ndarray) -> LandmarkTable:
    """Median hit per landmark and yaw bin, made left/right symmetric, snapped to the surface.
    A bin where FaceMesh missed a point takes the neighbouring bin toward frontal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)    # a landmark FaceMesh missed in a whole bin
        by_yaw = np.stack([np.nanmedian(hits[poses[:, 0] == yaw], 0) for yaw in YAW_BINS])  # (B, L, 3)
    mirror = mirror_pairs(by_yaw)
    by_yaw = 0.5 * (by_yaw + by_yaw[::-1][:, mirror] * [-1.0, 1.0, 1.0])     # bin -yaw mirrors bin +yaw
    centre = YAW_BINS.index(0)
    for b in sorted(range(len(YAW_BINS)), key=lambda b: abs(YAW_BINS[b])):
        toward_centre = b + (1 if b < centre else -1)
        if b != centre:
            by_yaw[b] = np.where(np.isnan(by_yaw[b]), by_yaw[toward_centre], by_yaw[b])
    vertices = model.vertices.astype(np.float64)
    on_iris = np.isin(np.arange(hits.shape[1]), IRIS)
    tri = np.zeros(by_yaw.shape, np.int32)
    bary = np.zeros(by_yaw.shape, np.float32)
    for chosen, surface in ((on_iris, landmark_surface(model)), (~on_iris, skin_surface(model))):
        tri[:, chosen], bary[:, chosen] = (part.reshape(len(YAW_BINS), -1, 3) for part in
                                           snap_to_surface(by_yaw[:, chosen].reshape(-1, 3), vertices, surface))
    # The eyelids' hits lie on the eyeball just inside the lid's margin; their skin places keep them
    # following a blink, the offset puts them back where FaceMesh saw them. Elsewhere the hits are on
    # the skin already, or a median of hits on different surfaces that has no place of its own.
    lids = np.isin(np.arange(hits.shape[1]), np.concatenate(EYE_RINGS))
    offset = np.where(lids[None, :, None], by_yaw - np.einsum("blk,blkd->bld", bary, vertices[tri]), 0.0)
    spread = np.nanmedian(np.linalg.norm(hits - np.nanmedian(hits, 0), axis=2), 0) * 1000
    return LandmarkTable(yaw_bins=np.asarray(YAW_BINS, np.float32),
                         triangle_vertices=tri.transpose(1, 0, 2).copy(), bary=bary.transpose(1, 0, 2).copy(),
                         spread_mm=spread.astype(np.float32),
                         hit_offset=offset.transpose(1, 0, 2).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=shared_model_path())
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--output", type=Path, default=TABLE_PATH)
    parser.add_argument("--save-renders", type=Path)
    parser.add_argument("--hits", type=Path, help="cache of the traced hits (.npz): reused when it exists")
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        model = HeadModel.load(args.model)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if args.hits and args.hits.exists():
        with np.load(args.hits) as cached:
            hits, poses = cached["hits"], cached["poses"]
    else:
        hits, poses = collect_hits(model, args.identities, args.save_renders)
        if args.hits:
            np.savez_compressed(args.hits, hits=hits, poses=poses)
    table = build_table(model, hits, poses)
    table.save(args.output)
    print(f"{len(hits)} renders; median spread of the hits "
          f"{np.median(table.spread_mm):.2f} mm; wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
