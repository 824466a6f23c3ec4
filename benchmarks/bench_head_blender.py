"""Head mode in Blender: build time of the head object and its export times.

The reply is built from the shared ICT model (tests/head_fixtures.py: 24,591 vertices, 24,144 quads
+ 548 triangles, 53 expressions) with a generated atlas of --texture pixels. Median of N runs:
  mesh         headdata buffers + scene.mesh_from_arrays (vertices, loops, polygons, UVs, materials)
  shape keys   53 keys, basis + deltas, weights set
  object       heads.build_head_object: all of the above + packed images + 7 materials + modifiers
  evaluate     first depsgraph evaluation (shape keys, smooth, subdivision, displace)
then one run each of the exports (.blend, glb, FBX, OBJ+MTL+PNG).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_head_blender.py [--runs 5] [--texture 1024]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ and benchmarks/ are not installed packages

import bpy  # noqa: E402

from addon.data import headdata
from addon.writers import head_export
from addon.scene import faces, heads  # noqa: E402
from benchmarks import bench_mesh_build  # noqa: E402
from tests.head_fixtures import head_reply_from_model, shared_model_path  # noqa: E402


def _clear() -> None:
    bpy.ops.wm.read_homefile(use_empty=True)
    for collection in (bpy.data.meshes, bpy.data.materials, bpy.data.textures, bpy.data.images):
        for block in list(collection):
            collection.remove(block)


def median_ms(fn, runs: int) -> float:
    return bench_mesh_build.median_ms(fn, runs, clear=_clear)


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--texture", type=int, default=1024)
    args = parser.parse_args()
    model = shared_model_path()
    if not model.exists():
        sys.exit(f"error: the shared head model is missing: {model}")
    face = head_reply_from_model(model, texture_size=args.texture)
    arrays, meta = face.arrays, face.meta
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Blender {bpy.app.version_string}, median of {args.runs} runs, {os.cpu_count()} CPUs, load {load:.1f}, "
          f"{len(arrays['vertices'])} vertices, {len(arrays['polygon_sizes'])} polygons, "
          f"{len(meta['expressions'])} expressions, {args.texture} px atlas")
    keys = headdata.shape_keys(arrays["vertices"], arrays["expression_deltas"], arrays["expression_weights"],
                               meta["expressions"])
    mesh_ms = median_ms(lambda: scene.mesh_from_arrays("bench", headdata.head_mesh_arrays(arrays, 7)), args.runs)

    def with_keys():
        obj = bpy.data.objects.new("bench", scene.mesh_from_arrays("bench", headdata.head_mesh_arrays(arrays, 7)))
        start = time.perf_counter()
        heads.add_shape_keys(obj, keys)
        return (time.perf_counter() - start) * 1000

    keys_ms = statistics.median(with_keys() for _ in range(args.runs))
    build = lambda: heads.build_head_object(face, name="head", settings=faces.BuildSettings())  # noqa: E731
    object_ms = median_ms(build, args.runs)
    print(f"mesh {mesh_ms:.0f} ms, shape keys {keys_ms:.0f} ms, full object {object_ms:.0f} ms")

    _clear()
    obj = build()
    evaluate_ms = timed_ms(lambda: obj.evaluated_get(bpy.context.evaluated_depsgraph_get()))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        blend_ms = timed_ms(lambda: bpy.ops.wm.save_as_mainfile(filepath=str(out / "head.blend"), copy=True,
                                                                compress=True))
        glb_ms = timed_ms(lambda: head_export.export_glb([obj], out / "head.glb"))
        fbx_ms = timed_ms(lambda: head_export.export_fbx([obj], out / "head.fbx"))
        obj_ms = timed_ms(lambda: head_export.export_obj([obj], out / "head.obj"))
        sizes = {p.suffix: p.stat().st_size / 2**20 for p in out.iterdir()}
    print(f"first evaluation {evaluate_ms:.0f} ms; exports: .blend {blend_ms:.0f} ms ({sizes['.blend']:.1f} MB), "
          f"glb {glb_ms:.0f} ms ({sizes['.glb']:.1f} MB), FBX {fbx_ms:.0f} ms ({sizes['.fbx']:.1f} MB), "
          f"OBJ+MTL+PNG {obj_ms:.0f} ms ({sizes['.obj']:.1f} MB obj)")


if __name__ == "__main__":
    main()
