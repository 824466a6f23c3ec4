"""Mesh build time in Blender for 10k- and 100k-vertex replies (targets: <= 10 ms and <= 60 ms).

Synthesises grid replies with the wire layout (float32 vertices in metres, int32 triangles, per-vertex
UVs, 512x512 texture and detail, 256x256 depth) and times, median of N runs:
  mesh    faces.build_mesh: vertices, loops, polygons, UVs, smooth shading (the foreach_set path)
  object  faces.build_face_object: mesh + packed images + material + modifiers (what a user waits for)

    .venv/bin/python benchmarks/bench_mesh_build.py [--runs 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from types import SimpleNamespace

import numpy as np

import bpy

from addon.scene import faces


def grid_reply(side: int, texture_size: int = 512, depth_size: int = 256) -> SimpleNamespace:
    """A side x side vertex grid shaped like a face reply (0.14 m wide, a dome toward -Y)."""
    u, v = np.meshgrid(np.linspace(0, 1, side, dtype=np.float32), np.linspace(0, 1, side, dtype=np.float32))
    x, z = (u - 0.5) * 0.14, (v - 0.5) * 0.18
    y = -0.05 * (1 - (2 * u - 1) ** 2) * (1 - (2 * v - 1) ** 2)
    vertices = np.stack([x, y, z], -1).reshape(-1, 3).astype(np.float32)
    index = np.arange(side * side, dtype=np.int32).reshape(side, side)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    rng = np.random.default_rng(0)
    arrays = {
        "vertices": vertices, "faces": faces, "uvs": np.stack([u, v], -1).reshape(-1, 2),
        "texture": rng.integers(0, 256, (texture_size, texture_size, 3), dtype=np.uint8),
        "detail": rng.normal(0, 0.05, (texture_size, texture_size)).astype(np.float32),
        "depth": rng.random((depth_size, depth_size), dtype=np.float32) * 0.1,
    }
    return SimpleNamespace(index=0, meta={"vertex_count": len(vertices)}, arrays=arrays)


def _clear() -> None:
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.textures, bpy.data.images):
        for block in list(collection):
            collection.remove(block)


def median_ms(fn, runs: int, clear=_clear) -> float:
    """Median wall time of ``fn`` in milliseconds, each run on a scene emptied by ``clear``."""
    times = []
    for _ in range(runs):
        clear()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    clear()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Blender {bpy.app.version_string}, median of {args.runs} runs, {os.cpu_count()} CPUs, load {load:.1f}")
    for side, target in ((100, 10.0), (317, 60.0)):
        face = grid_reply(side)
        arrays = face.arrays
        mesh_ms = median_ms(lambda: faces.build_mesh("bench", arrays["vertices"], arrays["faces"], arrays["uvs"]),
                            args.runs)
        object_ms = median_ms(lambda: faces.build_face_object(face, name="bench", settings=faces.BuildSettings()),
                              args.runs)
        verdict = "ok" if mesh_ms <= target else "OVER TARGET"
        print(f"{len(arrays['vertices']):>7} vertices {len(arrays['faces']):>7} triangles: "
              f"mesh {mesh_ms:6.1f} ms (target {target:g} ms, {verdict}), full object {object_ms:6.1f} ms")


if __name__ == "__main__":
    main()
