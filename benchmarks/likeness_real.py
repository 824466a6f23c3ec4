"""Likeness on real photos: one person's heads under nuisance changes should stay close, and
different people's should differ.

    .venv/bin/python benchmarks/likeness_real.py [--cues CKPT] [--mirror-average on|off] [--clay DIR] [--set FIELD=VALUE ...]

For each real photo (scikit-image's astronaut, matplotlib's Grace Hopper) the script makes variants
that change nothing about the person — a tighter crop, half the resolution, a 15 deg tilt, a side
light, JPEG quality 25, a mirror image (its head is mirrored back before comparing) — fits the head
with landmarks alone and with the cues network, and prints per method: ``within`` (mean distance of a
variant's canonical head from the original's, face region, similarity-aligned), ``between`` (mean
distance between the two people's heads over all their variants) and the ratio between / within
(higher: the head says more about who it is than about how the photo was taken). ``--clay DIR``
writes front / 45 deg / profile clay renders of each original's fitted heads, and the README's figure
(``likeness_clay.jpg``: each photo beside its heads).
"""
from __future__ import annotations

import argparse
import sys
from itertools import product
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def variants(rgb: np.ndarray) -> dict[str, np.ndarray]:
    import cv2
    from PIL import Image

    h, w = rgb.shape[:2]
    ramp = np.linspace(0.45, 1.25, w)[None, :, None]
    ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 25])
    return {"original": rgb,
            "crop": rgb[h // 10: h - h // 20, w // 12: w - w // 12].copy(),
            "half": cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA),
            "tilt": np.asarray(Image.fromarray(rgb).rotate(15, resample=Image.BICUBIC, expand=True, fillcolor=(90, 90, 90))),
            "side_light": np.clip(rgb * ramp, 0, 255).astype(np.uint8),
            "jpeg": cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[..., ::-1].copy(),
            "mirror": rgb[:, ::-1].copy()}


def photos() -> dict[str, np.ndarray]:
    from PIL import Image
    from skimage import data

    from tests.conftest import grace_hopper_path

    return {"astronaut": data.astronaut(), "grace_hopper": np.asarray(Image.open(grace_hopper_path()).convert("RGB"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cues", type=Path, help="cues checkpoint (default: the shipped one)")
    parser.add_argument("--mirror-average", choices=("on", "off"), default="on",
                        help="the network also sees the mirrored crop (the product's default: on)")
    parser.add_argument("--clay", type=Path, help="write clay renders of the originals' heads here")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override HeadFitConfig fields")
    args = parser.parse_args()
    import torch

    from benchmarks.head_fit_eval import LandmarkReader, canonical_difference_mm, config_with, shared_model_path
    from inference_server.cues import checkpoint
    from inference_server.cues.predict import CuesPredictor
    from inference_server.head.correspondence import LandmarkTable
    from inference_server.head.basis import ShapeBasis
    from inference_server.head.fit import fit_head
    from inference_server.head.model import HeadModel
    from inference_server.head.symmetry import mirror_of

    torch.set_num_threads(2)
    model = HeadModel.load(shared_model_path())
    basis = ShapeBasis(model, LandmarkTable.load(), torch.device("cpu"))
    predictor = CuesPredictor.load(args.cues or checkpoint.SHIPPED, model, mirror_average=args.mirror_average == "on")
    reader = LandmarkReader()
    mirror = mirror_of(model).index
    config = config_with(args.set)
    heads: dict[str, dict[tuple[str, str], np.ndarray]] = {"landmarks": {}, "cues": {}}
    originals = photos()
    for person, rgb in originals.items():
        for name, image in variants(rgb).items():
            landmarks = reader(image)
            for method in heads:
                cues = predictor(image, landmarks) if method == "cues" else None
                canonical = fit_head(model, landmarks, image.shape[:2], config, basis=basis, cues=cues).canonical_vertices
                if name == "mirror":
                    canonical = canonical[mirror] * [-1.0, 1.0, 1.0]
                heads[method][(person, name)] = canonical
    people = sorted({person for person, _ in heads["landmarks"]})
    print(f"{'method':10} {'within mm':>10} {'between mm':>11} {'ratio':>7}   within per variant")
    for method, found in heads.items():
        within = {key: canonical_difference_mm(model, head, found[(key[0], "original")]) for key, head in found.items()
                  if key[1] != "original"}
        between = [canonical_difference_mm(model, found[a], found[b]) for a, b in product(found, found)
                   if a[0] == people[0] and b[0] == people[1]]
        w, b = float(np.mean(list(within.values()))), float(np.mean(between))
        detail = " ".join(f"{k[0][:5]}/{k[1]} {v:.2f}" for k, v in within.items())
        print(f"{method:10} {w:10.2f} {b:11.2f} {b / w:7.2f}   {detail}")
    if args.clay:
        from PIL import Image

        from inference_server.head.render import clay_views

        args.clay.mkdir(parents=True, exist_ok=True)
        panels = []
        for person in people:
            rows = [clay_views(heads[method][(person, "original")], model, size=256) for method in heads]
            grid = np.concatenate([clay_views(model.vertices, model, size=256)] + rows, 0)
            Image.fromarray(grid).save(args.clay / f"{person}_clay.png")
            print(f"wrote {args.clay / f'{person}_clay.png'} (rows: mean head, landmarks, cues)")
            panels.append(beside_photo(originals[person], grid))
        gap = np.full((panels[0].shape[0], 16, 3), 255, np.uint8)
        Image.fromarray(np.concatenate([panels[0], gap, panels[1]], 1)).save(args.clay / "likeness_clay.jpg", quality=88)
        print(f"wrote {args.clay / 'likeness_clay.jpg'} (the README's figure)")


def beside_photo(photo: np.ndarray, grid: np.ndarray, width: int = 256) -> np.ndarray:
    """The photo, scaled to ``width`` pixels wide, at the top left of a column beside the clay grid,
    on the grid's background colour."""
    import cv2

    height = round(photo.shape[0] * width / photo.shape[1])
    column = np.empty((grid.shape[0], width, 3), np.uint8)
    column[:] = grid[0, 0]
    column[:height] = cv2.resize(photo[..., :3], (width, height), interpolation=cv2.INTER_AREA)
    return np.concatenate([column, grid], 1)


if __name__ == "__main__":
    main()
