"""A real face in a video whose truth is known: a photo moved in the picture.

    .venv/bin/python benchmarks/video_real.py [--photo astronaut|grace_hopper] [--seconds 4] [--roll 12] [--strip JPG] [--set FIELD=VALUE ...]

No real video of a person with measured expressions exists offline, so this makes the next best
thing from a real photo (the astronaut or Grace Hopper): every frame is the photo turned in the
image plane about the frame's centre (+-``--roll`` degrees), zoomed (+-12 %) and brightened or dimmed
(+-15 %), written as an MP4 and read back through the product's decoder. Whatever the head does in the
recovered performance is then known: its rotation relative to the first frame is exactly a turn about
the camera's axis by the photo's own turn (the default camera's centre is the frame's centre), and its
expressions do not change at all. Printed, in one run:

- the rotation error per frame (mean, 95th percentile): the recovered rotation relative to the first
  frame against the photo's turn;
- expression jitter: per expression, the spread (5th-95th percentile) of its weight over the frames,
  the largest and the mean over the 53; and the weights' mean, for scale;
- frames per second of the whole capture on this CPU.

A photo's face is a real face (FaceMesh and the fit see real skin, hair and light), but its motion is
rigid and its expression still: this measures tracking stability on a real face, not expression
accuracy (``video_eval.py`` does that on renders).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def turns(count: int, roll_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: the photo's turn in the image (degrees, counter-clockwise as seen), zoom and gain."""
    phase = np.arange(count) / max(count - 1, 1)
    return (roll_deg * np.sin(2 * np.pi * phase), 1 + 0.12 * np.sin(2 * np.pi * phase + 1.0),
            1 + 0.15 * np.sin(4 * np.pi * phase))


def moved_frames(rgb: np.ndarray, angles: np.ndarray, zooms: np.ndarray, gains: np.ndarray):
    import cv2

    height, width = rgb.shape[:2]
    for angle, zoom, gain in zip(angles, zooms, gains):
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), float(angle), float(zoom))
        moved = cv2.warpAffine(rgb, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(110, 110, 110))
        yield np.clip(moved.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def image_turn(angle_deg: float) -> np.ndarray:
    """The camera-frame rotation (x right, y down, z forward) that turns the picture by ``angle_deg``
    counter-clockwise as seen, as OpenCV's ``getRotationMatrix2D`` does."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def evaluate(performance, angles: np.ndarray) -> dict:
    from inference_server.head.camera import rotation_angle_deg

    tracked = np.nonzero(performance.tracked)[0]
    first = tracked[0]
    errors = np.array([rotation_angle_deg(image_turn(angles[n] - angles[first]) @ performance.rotation[first],
                                          performance.rotation[n]) for n in tracked])
    weights = performance.weights[tracked]
    spread = np.percentile(weights, 95, axis=0) - np.percentile(weights, 5, axis=0)
    return {"tracked": len(tracked) / len(angles), "rotation_mean_deg": float(errors.mean()),
            "rotation_p95_deg": float(np.percentile(errors, 95)), "jitter_max": float(spread.max()),
            "jitter_worst": int(spread.argmax()), "jitter_mean": float(spread.mean()),
            "weight_mean": float(weights.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", choices=("astronaut", "grace_hopper"), default="astronaut")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--roll", type=float, default=12.0, help="the photo's turn in the image, +- degrees")
    parser.add_argument("--strip", type=Path, help="write a frame strip (video over the driven head) here")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override VideoFitConfig fields")
    args = parser.parse_args()
    import torch

    from benchmarks.head_fit_eval import config_with, shared_model_path
    from benchmarks.likeness_real import photos
    from benchmarks.video_eval import frame_strip
    from inference_server.pipeline import FacePipeline
    from inference_server.video.capture import capture_video
    from inference_server.video.performance import VideoFitConfig
    from inference_server.video.reader import write_mp4

    count = int(args.seconds * args.fps)
    angles, zooms, gains = turns(count, args.roll)
    video = Path(tempfile.mkdtemp()) / f"{args.photo}.mp4"
    write_mp4(video, moved_frames(photos()[args.photo], angles, zooms, gains), args.fps)
    pipeline = FacePipeline(torch.device("cpu"), head_model=shared_model_path())
    started = time.perf_counter()
    result, performance = capture_video(pipeline, video, fit=config_with(args.set, VideoFitConfig()))
    seconds = time.perf_counter() - started
    row = evaluate(performance, angles)
    names = pipeline.head.model.exp_names
    detections = result.faces[0].meta["video"]["detections"]
    print(f"{args.photo}: frames {count}, tracked {100 * row['tracked']:.0f} %, capture {seconds:.1f} s = "
          f"{count / seconds:.2f} frames/s ({result.meta['timings_ms']}; {detections} face detections)")
    print(f"rotation relative to the first frame vs the photo's turn (+-{args.roll:g} deg): mean "
          f"{row['rotation_mean_deg']:.2f} deg, 95th percentile {row['rotation_p95_deg']:.2f} deg")
    print(f"expression jitter (5th-95th percentile spread of a still face's weights): largest "
          f"{row['jitter_max']:.3f} ({names[row['jitter_worst']]}), mean over the 53 {row['jitter_mean']:.4f}; "
          f"mean weight {row['weight_mean']:.3f}")
    if args.strip:
        frame_strip(pipeline.head.model, video, performance, result, args.strip)
        print(f"wrote {args.strip}")


if __name__ == "__main__":
    main()
