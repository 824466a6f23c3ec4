"""Batch throughput: photos per second for a folder of photos with --jobs 1 and --jobs 2.

    .venv/bin/python benchmarks/bench_batch.py [--photos 20] [--jobs 1,2] [--formats blend]
        [--blender /usr/bin/blender | --blender python] [--server ADDR] [-- EXTRA BATCH ARGS]

The folder holds the two real test photos (skimage's astronaut, matplotlib's Grace Hopper) and
flipped / rescaled / re-encoded variants of them, so every photo is a distinct request. One server
(started here on the CPU unless --server is given) serves every run, so model loading is not
counted; each run writes into a fresh output folder. Prints, per --jobs value: wall-clock time of
the Blender command, the batch's own processing time (summary.json: from the server being ready
to the last photo), and photos per second for both.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_photos(folder: Path, count: int) -> list:
    import matplotlib
    import numpy as np
    from PIL import Image
    from skimage import data

    sources = [("astronaut", Image.fromarray(data.astronaut())),
               ("grace_hopper", Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))]
    variants = [("orig", lambda im: im), ("flip", lambda im: im.transpose(Image.FLIP_LEFT_RIGHT))]
    for scale in (0.75, 1.25, 1.5, 0.6):
        variants.append((f"s{int(scale * 100)}", lambda im, s=scale: im.resize((int(im.width * s), int(im.height * s)),
                                                                               Image.LANCZOS)))
        variants.append((f"s{int(scale * 100)}flip", lambda im, s=scale: im.transpose(Image.FLIP_LEFT_RIGHT).resize(
            (int(im.width * s), int(im.height * s)), Image.LANCZOS)))
    written = []
    i = 0
    while len(written) < count:
        name, image = sources[i % len(sources)]
        tag, make = variants[(i // len(sources)) % len(variants)]
        rounds = i // (len(sources) * len(variants))
        out = make(image)
        if rounds:  # more photos than variants: nudge brightness so the bytes differ
            out = Image.fromarray(np.clip(np.asarray(out, dtype=np.int16) + 3 * rounds, 0, 255).astype(np.uint8))
        path = folder / f"{i:03d}_{name}_{tag}{'_r%d' % rounds if rounds else ''}.{'jpg' if i % 2 else 'png'}"
        buf = io.BytesIO()
        out.save(buf, "JPEG" if path.suffix == ".jpg" else "PNG", **({"quality": 92} if path.suffix == ".jpg" else {}))
        path.write_bytes(buf.getvalue())
        written.append(path)
        i += 1
    return written


def start_server():
    from addon.server_process import LocalServer, find_python, free_address

    python = find_python()
    if python is None:
        raise SystemExit("error: no Python with torch for the server: set FACEFORGE_PYTHON or run ./run setup")
    server = LocalServer(python, free_address(), cwd=str(ROOT), device="cpu")
    server.start(300)
    return server


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--formats", default="blend")
    parser.add_argument("--blender", default="/usr/bin/blender" if Path("/usr/bin/blender").exists() else "python",
                        help="Blender binary, or 'python' for this interpreter with bpy from PyPI")
    parser.add_argument("--server", help="use a running server instead of starting one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="faceforge-bench-batch-"))
    server = None
    try:
        photos_dir = work / "photos"
        photos_dir.mkdir()
        photos = make_photos(photos_dir, args.photos)
        address = args.server
        if address is None:
            t = time.perf_counter()
            server = start_server()
            address = server.address
            print(f"server {address} started in {time.perf_counter() - t:.1f} s (CPU, not counted)")
        if args.blender == "python":
            launcher = [sys.executable, str(ROOT / "scripts" / "batch.py"), "--"]
            label = f"python + bpy ({sys.executable})"
        else:
            launcher = [args.blender, "-b", "--factory-startup", "--python-exit-code", "1", "-P",
                        str(ROOT / "scripts" / "batch.py"), "--"]
            label = args.blender
        print(f"{len(photos)} photos, formats {args.formats}, {label}, {os.cpu_count()} CPU cores, extra {extra or '-'}")
        results = []
        for run_index, jobs in enumerate(int(j) for j in args.jobs.split(",")):
            output = work / f"out{run_index}_jobs{jobs}"
            command = launcher + ["--input", str(photos_dir), "--output", str(output), "--server", address,
                                  "--formats", args.formats, "--jobs", str(jobs), *extra]
            t = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t
            summary = json.loads((output / "summary.json").read_text())
            ok = summary["counts"]["ok"]
            if result.returncode != 0 or ok != len(photos):
                print(result.stdout[-3000:], result.stderr[-3000:])
                print(f"jobs {jobs}: exit {result.returncode}, {ok}/{len(photos)} ok")
                return 1
            ready = summary["run"].get("elapsed_s", wall)
            handle = [p["timings_s"].get("handle", 0.0) for p in summary["photos"]]
            server_ms = [sum(p["server_timings_ms"].values()) for p in summary["photos"]]
            results.append((jobs, wall, ready, sum(handle) / len(handle), sum(server_ms) / len(server_ms) / 1000))
            print(f"jobs {jobs}: {ok} photos in {wall:6.1f} s wall = {ok / wall:.3f} photos/s | "
                  f"batch run {ready:6.1f} s = {ok / ready:.3f} photos/s | per photo: Blender build+write "
                  f"{results[-1][3]:.2f} s, server pipeline {results[-1][4]:.2f} s", flush=True)
        best = {}
        for jobs, wall, ready, *_ in results:
            best[jobs] = min(best.get(jobs, ready), ready)
        if len(best) > 1:
            base_jobs = min(best)
            for jobs, ready in sorted(best.items()):
                print(f"best of runs, jobs {jobs}: {len(photos) / ready:.3f} photos/s "
                      f"({best[base_jobs] / ready:.2f}x jobs {base_jobs})")
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
