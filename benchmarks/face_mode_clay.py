"""Face mode on the real photos as clay: each depth backend's face at front / 45 deg / profile.

    .venv/bin/python benchmarks/face_mode_clay.py [--backends landmarks cues] [--out docs/images/face_mode_cues.jpg]

Rows: for each photo (the astronaut, Grace Hopper), one per backend, through the real face-mode
pipeline; rendered by our rasteriser (Lambert clay), so what the network does to the surface of a
real face can be looked at. No ground truth exists for these photos: this is for the eye.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def clay_row(vertices: np.ndarray, faces: np.ndarray, size: int = 256) -> np.ndarray:
    """Front / 45 deg / profile of a face mesh in Blender's frame (Z up, the face looking along -Y)."""
    import torch

    from inference_server.head.camera import Camera
    from inference_server.head.render import render_shaded

    centred = vertices - vertices.mean(0)
    camera = Camera(size * 4.5, (size / 2, size / 2), (size, size))
    views = []
    for yaw in np.radians([0.0, 45.0, 90.0]):
        turn = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        turned = centred @ turn.T
        in_camera = np.stack([turned[:, 0], -turned[:, 2], turned[:, 1] + 1.0], 1).astype(np.float32)
        rgb, _ = render_shaded(torch.from_numpy(in_camera), torch.from_numpy(faces.astype(np.int64)),
                               torch.full((len(vertices), 3), 0.75), camera)
        views.append(rgb)
    return np.concatenate(views, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["landmarks", "cues"])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "face_mode_cues.jpg")
    args = parser.parse_args()
    import torch
    from PIL import Image

    from benchmarks.likeness_real import photos
    from inference_server.pipeline import FacePipeline

    pipeline = FacePipeline(torch.device("cpu"))
    rows = []
    for person, rgb in photos().items():
        encoded = io.BytesIO()
        Image.fromarray(rgb).save(encoded, "PNG")
        for backend in args.backends:
            face = pipeline.reconstruct(encoded.getvalue(), {"geometry": "face", "depth_backend": backend}).faces[0]
            rows.append(clay_row(face.arrays["vertices"].astype(np.float64), face.arrays["faces"]))
            print(f"{person}: {backend} -> {face.meta['depth_backend']}", flush=True)
    Image.fromarray(np.concatenate(rows, 0)).save(args.out, quality=90)
    print(f"wrote {args.out} (rows: each photo x {', '.join(args.backends)})")


if __name__ == "__main__":
    main()
