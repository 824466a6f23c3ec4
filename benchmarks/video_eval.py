"""A video of a known head against what ``capture_video`` recovers from it.

    .venv/bin/python benchmarks/video_eval.py [--seconds 4] [--fps 30] [--beyond] [--keep DIR] [--set FIELD=VALUE ...]

The video is rendered by the project's rasteriser: one ICT-FaceKit identity (``--beyond``: plus smooth
shape the model cannot represent), expression curves (jaw opening and closing, a smile, two blinks,
raised brows) and head motion (yaw swinging +-25 deg by default, pitch and roll a few degrees), written as an
MP4 by OpenCV's encoder and read back through the product's own decoder, so compression is in the
loop. Printed, in one run:

- per moving expression: correlation of the recovered curve with the truth, and its gain (the slope of
  the recovered weight on the true one: how much of the true swing the animation shows, 1 is all);
- head rotation error per frame (mean, 95th percentile), degrees: of the head object as is, of the
  face (the fitted head's shape aligned onto the true one first, since the identity modes carry a
  little tilt of their own), and after the one constant offset that fits the rotations best;
- identity: surface error of the video's head vs the unfitted mean head and vs ``fit_views`` on three
  renders of the same head at 0, 35 and 70 deg (the several-photos fit);
- frames per second of the whole capture on this CPU.

Needs the shared ICT-FaceKit npz (evaluation data, never part of the product).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import (CAMERA_SIZE, Subject, config_with, evaluation_model, make_subject,  # noqa: E402
                                      render_subject, shape_errors, shared_model_path)

MOVING = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L", "browInnerUp_R")


def curves(model, times: np.ndarray, yaw_deg: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """(F, 53) expression weights and (F, 3) yaw/pitch/roll degrees over ``times`` (seconds); the yaw
    swings by +-``yaw_deg``."""
    span = max(float(times[-1]), 1e-6)
    phase = times / span
    weights = np.zeros((len(times), len(model.exp_names)), np.float32)

    def put(name: str, values: np.ndarray) -> None:
        weights[:, model.exp_names.index(name)] = np.clip(values, 0, 1)

    put("jawOpen", 0.45 * np.sin(np.pi * 2 * phase) ** 2)
    smile = 0.6 * np.exp(-0.5 * ((phase - 0.65) / 0.12) ** 2)
    put("mouthSmile_L", smile)
    put("mouthSmile_R", smile)
    blink = sum(np.exp(-0.5 * ((times - centre) / 0.06) ** 2) for centre in (0.3 * span, 0.8 * span))
    put("eyeBlink_L", blink)
    put("eyeBlink_R", blink)
    brows = 0.5 * np.exp(-0.5 * ((phase - 0.35) / 0.1) ** 2)
    put("browInnerUp_L", brows)
    put("browInnerUp_R", brows)
    angles = np.stack([yaw_deg * np.sin(2 * np.pi * phase), 6 * np.sin(4 * np.pi * phase + 0.5),
                       4 * np.sin(2 * np.pi * phase + 1.0)], 1)
    return weights, angles


def render_video(model, subject: Subject, weights: np.ndarray, angles: np.ndarray):
    """Frames of ``subject`` with the given expression weights and head angles."""
    for frame_weights, pose in zip(weights, angles):
        yield render_subject(model, replace(subject, exp_weights=frame_weights, pose=tuple(map(float, pose))))


def evaluate(model, table, subject: Subject, performance, result, weights: np.ndarray, angles: np.ndarray) -> dict:
    from inference_server.head.camera import head_rotation, rotation_angle_deg

    tracked = performance.tracked
    correlation, gain = {}, {}
    for name in MOVING:
        column = model.exp_names.index(name)
        truth, found = weights[tracked, column], performance.weights[tracked, column]
        correlation[name] = float(np.corrcoef(truth, found)[0, 1]) if found.std() > 1e-6 else 0.0
        gain[name] = float(np.cov(truth, found)[0, 1] / truth.var(ddof=1))
    true_head = subject.canonical(model)
    identity = np.asarray(result.faces[0].meta["identity"], np.float32)
    head = model.shape(identity)
    # (true, fitted) rotation of every tracked frame
    pairs = list(zip([head_rotation(*pose) for pose in angles[tracked]], performance.rotation[tracked]))
    errors = np.array([rotation_angle_deg(want, got) for want, got in pairs])
    # The identity modes carry a little head tilt of their own (~1.6 deg at 1 sigma), which a photo
    # cannot tell from pose. The face's rotation compares how the two faces are turned: the truth's
    # rotation times the one similarity alignment of the fitted head onto the true head (from the
    # shapes alone, as head_fit_eval's face_pose_deg); the motion, after the one constant offset that
    # fits the rotations best (the floor any fixed tilt correction can reach).
    shapes = shape_errors(model, table, head, true_head)
    face = np.array([rotation_angle_deg(want @ shapes["alignment"], got) for want, got in pairs])
    u, _, vt = np.linalg.svd(sum(want.T @ got for want, got in pairs))
    offset = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    relative = np.array([rotation_angle_deg(want @ offset, got) for want, got in pairs])
    return {"correlation": correlation, "gain": gain, "rotation_mean_deg": float(errors.mean()),
            "rotation_p95_deg": float(np.percentile(errors, 95)), "face_mean_deg": float(face.mean()),
            "face_p95_deg": float(np.percentile(face, 95)), "motion_mean_deg": float(relative.mean()),
            "motion_p95_deg": float(np.percentile(relative, 95)), "tracked": float(tracked.mean()),
            "surface_mm": shapes["surface_mm"],
            "mean_head_mm": shape_errors(model, table, model.vertices, true_head)["surface_mm"]}


def multiview_surface(model, table, basis, subject: Subject, cues=None) -> float:
    """Surface error of the several-photos fit on renders at 0, 35 and 70 deg (neutral expression),
    with the cues network's dense cues when ``cues`` (a ``CuesPredictor``) is given, as the product
    fits several photos."""
    import torch

    from benchmarks.head_fit_eval import LandmarkReader
    from inference_server.head.fit import View, fit_views

    reader, views = LandmarkReader(), []
    for yaw in (0.0, 35.0, 70.0):
        rgb = render_subject(model, replace(subject, pose=(yaw, 4.0, -3.0)))
        try:
            landmarks = reader(rgb)
        except RuntimeError:
            continue
        views.append(View(landmarks, CAMERA_SIZE, cues=cues(rgb, landmarks) if cues is not None else None))
    fit = fit_views(model, views, device=torch.device("cpu"), basis=basis)[0]
    return shape_errors(model, table, model.shape(fit.id_coeffs), subject.canonical(model))["surface_mm"]


def frame_strip(model, video: Path, performance, result, path: Path, count: int = 6, tile: int = 200) -> None:
    """A JPEG: the video's frames (top) over the recovered head driven by the recovered expressions and
    pose, rendered as clay in the video's camera (bottom), at ``count`` evenly spread frames, each cut
    to a square around the frame's tracked face and scaled to ``tile`` pixels."""
    import cv2
    import torch
    from PIL import Image

    from inference_server.head import render
    from inference_server.head.camera import Camera
    from inference_server.video.reader import VideoReader

    identity = np.asarray(result.faces[0].meta["identity"], np.float32)
    picks = set(np.linspace(0, len(performance.time_s) - 1, count).round().astype(int).tolist())
    faces = torch.from_numpy(render.drawn_faces(model)).long()
    clay = torch.full((model.vertex_count, 3), 0.72)
    tiles = []
    with VideoReader(video, 10 ** 8) as reader:
        for frame in reader.frames():
            if frame.index not in picks or not performance.tracked[frame.index]:
                continue
            height, width = frame.rgb.shape[:2]
            camera = Camera(performance.focal_px, (width / 2, height / 2), (height, width))
            shape = model.shape(identity, performance.weights[frame.index])
            posed = shape @ performance.rotation[frame.index].T + performance.translation[frame.index]
            head, _ = render.render_shaded(torch.from_numpy(posed.astype(np.float32)), faces, clay, camera)
            marks = performance.landmarks[frame.index, :, :2]
            centre, half = (marks.max(0) + marks.min(0)) / 2, 0.8 * float((marks.max(0) - marks.min(0)).max())
            scale = tile / (2 * half)
            to_tile = np.array([[scale, 0, tile / 2 - scale * centre[0]], [0, scale, tile / 2 - scale * centre[1]]])
            cut = [cv2.warpAffine(picture, to_tile, (tile, tile), flags=cv2.INTER_AREA, borderValue=(128, 128, 128))
                   for picture in (frame.rgb, head)]
            tiles.append(np.concatenate(cut, 0))
    Image.fromarray(np.concatenate(tiles, 1)).save(path, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--yaw", type=float, default=25.0, help="the head's yaw swing, +- degrees")
    parser.add_argument("--beyond", action="store_true", help="add shape the model cannot represent")
    parser.add_argument("--keep", type=Path, help="keep the rendered MP4 here")
    parser.add_argument("--strip", type=Path, help="write a frame strip (video over the driven head) here")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override VideoFitConfig fields")
    args = parser.parse_args()
    import torch

    from inference_server.pipeline import FacePipeline
    from inference_server.video.capture import capture_video
    from inference_server.video.performance import VideoFitConfig
    from inference_server.video.reader import write_mp4

    model, table = evaluation_model()
    subject = make_subject(model, args.seed, args.beyond)
    subject = replace(subject, exp_weights=np.zeros_like(subject.exp_weights))  # the identity at rest is the truth
    times = np.arange(int(args.seconds * args.fps)) / args.fps
    weights, angles = curves(model, times, args.yaw)
    folder = args.keep or Path(tempfile.mkdtemp())
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "synthetic.mp4"
    started = time.perf_counter()
    write_mp4(video, render_video(model, subject, weights, angles), args.fps)
    print(f"rendered {len(times)} frames in {time.perf_counter() - started:.1f} s -> {video}", flush=True)
    pipeline = FacePipeline(torch.device("cpu"), head_model=shared_model_path())
    started = time.perf_counter()
    result, performance = capture_video(pipeline, video, fit=config_with(args.set, VideoFitConfig()))
    seconds = time.perf_counter() - started
    row = evaluate(model, table, subject, performance, result, weights, angles)
    row["multiview_mm"] = multiview_surface(model, table, pipeline.head.basis, subject, pipeline.head.cues)
    print(f"frames {len(times)}, tracked {100 * row['tracked']:.0f} %, capture {seconds:.1f} s = "
          f"{len(times) / seconds:.2f} frames/s ({result.meta['timings_ms']})")
    print("expression curves against the truth: correlation, gain")
    for name, value in row["correlation"].items():
        print(f"  {name:16s} {value:.3f}  {row['gain'][name]:.2f}")
    print(f"head rotation error (mean, 95th percentile): object {row['rotation_mean_deg']:.2f}, "
          f"{row['rotation_p95_deg']:.2f} deg; face (the heads' shapes aligned) {row['face_mean_deg']:.2f}, "
          f"{row['face_p95_deg']:.2f} deg; after the best constant offset {row['motion_mean_deg']:.2f}, "
          f"{row['motion_p95_deg']:.2f} deg")
    print(f"identity surface error (shape from {result.faces[0].meta['fit']['shape_cues']}): video "
          f"{row['surface_mm']:.2f} mm, three photos (0/35/70 deg) "
          f"{row['multiview_mm']:.2f} mm, unfitted mean head {row['mean_head_mm']:.2f} mm")
    print(f"key frames: {performance.key_frames}")
    if args.strip:
        frame_strip(model, video, performance, result, args.strip)
        print(f"wrote {args.strip}")


if __name__ == "__main__":
    main()
