"""Head model data path timings: converting the upstream OBJ folder, installing, and unwrapping a
photo into the atlas.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_head_data.py [--repeat 3] [--size 1024]

Needs the shared ICT-FaceKit data (../shared/data/ict_facekit, or /work/shared). The converted
folder has the full upstream layout (155 files): the upstream sample OBJs plus links to them under
the names the sample lacks, so parsing costs what the real folder costs. The unwrap uses the
astronaut photo with the neutral head projected frontally (facing as the weight).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference_server.head import convert, store, texels  # noqa: E402
from inference_server.head.atlas import atlas_of  # noqa: E402
from inference_server.head.model import HeadModel  # noqa: E402
from inference_server.head.symmetry import mirror_of  # noqa: E402
from inference_server.head.texture import unwrap  # noqa: E402
from tests import ict_fixtures  # noqa: E402


def timed(fn, repeat: int = 1) -> tuple[tuple[float, float], object]:
    """Median wall-clock and CPU seconds of ``repeat`` calls (CPU time tells what a busy machine hides)."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return (statistics.median(walls), statistics.median(cpus)), result


def frontal_projection(model: HeadModel, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image positions of the neutral head looking at the camera, and its facing as the weight."""
    centre = model.vertices[model.face_mask].mean(axis=0)
    distance, focal = 0.7, width * 1.0
    depth = distance - (model.vertices[:, 2] - centre[2])
    xy = np.stack([model.vertices[:, 0] - centre[0], centre[1] - model.vertices[:, 1]], axis=1) * focal / depth[:, None]
    normal = np.zeros_like(model.vertices)
    tri = model.vertices[model.faces]
    face_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for k in range(3):
        np.add.at(normal, model.faces[:, k], face_normal)
    facing = np.clip(normal[:, 2] / np.maximum(np.linalg.norm(normal, axis=1), 1e-12), 0, 1)
    return xy + width / 2, facing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    if not ict_fixtures.ICT_NPZ.is_file():
        print(f"error: no shared ICT-FaceKit data at {ict_fixtures.ICT_DIR}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = ict_fixtures.folder_with_stand_ins(Path(scratch) / "ICT-FaceKit" / "FaceXModel")
        seconds, arrays = timed(lambda: convert.convert_source(convert.open_source(folder)))
        rows.append(("convert 155-file FaceXModel folder (parse + deltas)", seconds))
        rows.append(("write the compact .npz", timed(lambda: convert.write_npz(arrays, Path(scratch) / "m.npz"))[0]))
        os.environ["FACEFORGE_DATA"] = str(Path(scratch) / "data")
        quiet = lambda line: None  # noqa: E731
        rows.append(("install from the folder (convert, check, write)", timed(lambda: store.install(folder, log=quiet))[0]))
        rows.append(("install from a converted .npz", timed(lambda: store.install(ict_fixtures.ICT_NPZ, log=quiet),
                                                            args.repeat)[0]))
    model = HeadModel.load(ict_fixtures.ICT_NPZ)
    rows.append(("load the model (HeadModel.load)", timed(lambda: HeadModel.load(ict_fixtures.ICT_NPZ), args.repeat)[0]))
    rows.append(("atlas (once per model)", timed(lambda: atlas_of(model))[0]))
    rows.append(("mirror map (once per model)", timed(lambda: mirror_of(model))[0]))
    rows.append((f"texel map {args.size}^2 (once per model and size)", timed(lambda: texels.texel_map(model, args.size))[0]))
    from skimage import data

    photo = data.astronaut()
    image_xy, weight = frontal_projection(model, photo.shape[1])
    seconds, (texture, coverage) = timed(lambda: unwrap(photo, image_xy, weight, model, args.size), args.repeat)
    rows.append((f"unwrap {args.size}^2 (median of {args.repeat})", seconds))
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"head model data timings (CPU, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, "
          f"load average {os.getloadavg()[0]:.1f})")
    print(f"  {'':<58} {'wall ms':>9} {'CPU ms':>9}")
    for name, (wall, cpu) in rows:
        print(f"  {name:<58} {wall * 1000:9.0f} {cpu * 1000:9.0f}")
    print(f"  photo coverage of the atlas: {coverage.mean():.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
