"""Photometric refinement: time per level and accuracy on rendered scenes with known answers.

Scenes (``tests/photometric_scenes.py``): the model head with a known skin texture, a known smooth
displacement (RMS 2 mm) and known SH lighting — ``side`` (a key light from one side, cheeks ~30x
apart) and ``soft`` (a frontal key plus ambient). Refinement starts from the head without the
displacement. Prints, per scene and level: wall and CPU seconds (CPU time of this process: on a
busy machine it is the honest figure), cheek luminance ratio of photo and albedo, SH irradiance
error (relative RMS over the camera-facing hemisphere, after the per-channel scale no photo fixes),
mean distance between corresponding face vertices and the truth before/after (mm), and the
photometric residual before/after. ``--photo astronaut`` also fits and refines that real photo.

    PYTHONPATH=. python benchmarks/head_photometric_eval.py --threads 2 [--device cuda] [--photo astronaut]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from inference_server.head import sh as spherical
from inference_server.head.camera import Camera
from inference_server.head.model import HeadModel
from inference_server.head.photometric import lit_texture, refine_head
from inference_server.head.shading import srgb_to_linear
from benchmarks.ict_eval import ICT_MODEL as MODEL
from tests import photometric_scenes as scenes


def _timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def evaluate_scene(model, name: str, scene, args) -> None:
    front = spherical.fibonacci_sphere(2000)
    front = front[front[:, 2] < 0]
    seen = np.nonzero(scenes.visible_face_vertices(model, scene.plain, scene.camera))[0]
    before_mm = scenes.mean_distance_mm(scene.plain, scene.truth, seen)
    photo_ratio = scenes.photo_cheek_ratio(model, scene)
    for level in ("light", "full"):
        for repeat in range(args.repeats):
            result, wall, cpu = _timed(lambda: refine_head(model, scene.photo, scene.plain, scene.camera, level,
                                                           device=args.device, texture_size=args.texture_size))
            print(f"{name:6s} {level:5s} run {repeat}: wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
                  + " ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
        refined = scenes.displaced(model, scene.plain, result.displacement)
        print(f"{name:6s} {level:5s} cheeks photo {photo_ratio:5.1f}x albedo "
              f"{scenes.cheek_ratio(model, srgb_to_linear(result.albedo_texture)):.3f}x | SH error "
              f"{spherical.irradiance_error(result.sh, scene.sh, front):.3f} | surface "
              f"{before_mm:.2f} -> {scenes.mean_distance_mm(refined, scene.truth, seen):.2f} mm | residual "
              f"{result.residual['before']:.4f} -> {result.residual['after']:.4f}")


def evaluate_photo(model, name: str, args) -> None:
    from skimage import data

    from benchmarks.head_fit_eval import LandmarkReader
    from inference_server.head.fit import fit_head

    rgb = getattr(data, name)()
    fit = fit_head(model, LandmarkReader()(rgb), rgb.shape[:2])
    camera = Camera(fit.focal, fit.principal, fit.image_size)
    for level in ("light", "full"):
        result, wall, cpu = _timed(lambda: refine_head(model, rgb, fit.posed_vertices, camera, level,
                                                       device=args.device, texture_size=args.texture_size))
        print(f"{name} {level}: wall {wall:.2f} s cpu {cpu:.2f} s residual {result.residual['before']:.4f} -> "
              f"{result.residual['after']:.4f}, displacement {1000 * result.displacement.min():.1f}.."
              f"{1000 * result.displacement.max():.1f} mm")
        if args.save:
            from PIL import Image

            args.save.mkdir(parents=True, exist_ok=True)
            Image.fromarray(result.albedo_texture).save(args.save / f"{name}_{level}_albedo.png")
            Image.fromarray(lit_texture(model, result)).save(args.save / f"{name}_{level}_lit.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2, help="runs per level (the first pays one-time caches)")
    parser.add_argument("--scenes", default="side,soft")
    parser.add_argument("--photo", action="append", default=[], help="a skimage.data photo, e.g. astronaut")
    parser.add_argument("--save", type=Path, help="folder for the real photos' albedo and lit textures")
    args = parser.parse_args(argv)
    if not MODEL.is_file():
        print(f"error: no head model at {MODEL}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model = HeadModel.load(MODEL)
    ratios = {"side": 30.0, "soft": None}
    for name in args.scenes.split(","):
        if name not in ratios:
            print(f"error: unknown scene {name!r} (side, soft)", file=sys.stderr)
            return 2
        evaluate_scene(model, name, scenes.make_scene(model, ratio=ratios[name], texture_size=args.texture_size),
                       args)
    for name in args.photo:
        evaluate_photo(model, name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
