"""The batch on Ray against the plain batch, in one run: photos per second, and the scaling from one Ray node
to two on the same machine.

    .venv/bin/python benchmarks/bench_ray.py [--photos 16] [--actors 2]

Runs, each into a fresh folder on the same photos (bench_batch.make_photos: the two real photos and their
variants), formats blend,glb:
- plain: ``scripts/batch.py --workers 2``, i.e. its own server and two Blender writers;
- ray, 1 node: ``--ray local`` with ``--actors`` model actors and as many writer actors;
- ray, 2 nodes: a ``ray.cluster_utils.Cluster`` of two raylets here, the same actors spread over them.

Figures per run. *Total* is the whole command: the server or Ray start, model loading, Blender's
start; *first photo* is when the first photo's line came. *Steady* runs from the first photo's line to the last one's, over the photos after the first,
so start-up is not counted. Both are in photos per second. The head model comes from $FACEFORGE_DATA, or
the shared ICT-FaceKit copy installed into a temporary folder. On this 2-core machine two nodes cannot
be faster than one: the figure shows what splitting costs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_batch import make_photos  # noqa: E402


def timed(command: list, env: dict) -> tuple:
    """(total seconds, steady photos/s, photos ok, seconds to the first photo's line) of one batch command, from
    its progress lines' arrival."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    stamps, ok = [], 0
    for line in process.stdout:
        if line.startswith("[") and "] " in line:
            stamps.append(time.perf_counter())
            ok += ": ok (" in line
    process.wait()
    total = time.perf_counter() - started
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return total, steady, ok, (stamps[0] - started) if stamps else float("nan")


def head_data(env: dict) -> str:
    if env.get("FACEFORGE_DATA"):
        return env["FACEFORGE_DATA"]
    from benchmarks.ict_eval import SHARED

    folder = tempfile.mkdtemp(prefix="bench-ray-data-")
    model = SHARED / "data" / "ict_facekit" / "ict_face_model.npz"
    subprocess.run([sys.executable, "-m", "inference_server", "model", "install", str(model)],
                   cwd=ROOT, env=dict(env, FACEFORGE_DATA=folder), check=True, capture_output=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--actors", type=int, default=2, help="model actors and writer actors on Ray (default 2)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env["FACEFORGE_DATA"] = head_data(env)
    os.environ.update(FACEFORGE_DATA=env["FACEFORGE_DATA"], PYTHONPATH=str(ROOT))  # the cluster's workers inherit it
    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    photos = scratch / "photos"
    photos.mkdir()
    make_photos(photos, args.photos)
    batch = [sys.executable, str(ROOT / "scripts" / "batch.py"), "--input", str(photos), "--formats", "blend,glb"]
    ray_args = ["--cpu-actors", str(args.actors), "--writer-actors", str(args.actors)]
    print(f"{args.photos} photos, head mode, blend+glb, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}")
    results = {"plain": timed(batch + ["--output", str(scratch / "plain"), "--workers", "2"], env),
               "ray, 1 node": timed(batch + ["--output", str(scratch / "ray1"), "--ray", "local", *ray_args], env)}
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.actors, "include_dashboard": False})
    cluster.add_node(num_cpus=args.actors)
    cluster.wait_for_nodes()
    try:
        results["ray, 2 nodes"] = timed(batch + ["--output", str(scratch / "ray2"), "--ray", cluster.address,
                                                 *ray_args], env)
    finally:
        cluster.shutdown()
    print(f"{'run':<14} {'total s':>8} {'first photo s':>14} {'photos/s total':>15} {'photos/s steady':>16} {'ok':>4}")
    for name, (total, steady, ok, first) in results.items():
        print(f"{name:<14} {total:8.1f} {first:14.1f} {args.photos / total:15.3f} {steady:16.3f} {ok:4d}")
    (_, plain, _, plain_first), (_, one, _, one_first) = results["plain"], results["ray, 1 node"]
    print(f"Ray, 1 node, steady: x{one / plain:.2f} the plain batch's photos/s (target: at least x0.85)")
    print(f"Ray, 1 node, whole command: x{results['plain'][0] / results['ray, 1 node'][0]:.2f} the plain batch's "
          f"photos/s; Ray starts {one_first - plain_first:+.1f} s later")
    if one > plain:  # first + (n - 1) / steady equal for both: from there on the whole Ray command is faster
        print(f"the whole Ray command is as fast from {1 + (one_first - plain_first) / (1 / plain - 1 / one):.0f} "
              "photos on")
    print(f"1 -> 2 nodes on this machine: x{results['ray, 2 nodes'][1] / one:.2f} photos/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
