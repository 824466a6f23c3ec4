"""Make ``fixtures/depth_upstream.npz``: what the published MiDaS / Depth Anything V2 code computes.

Runs the upstream repositories' own code (never part of this project) in a test-only environment:

    git clone https://github.com/isl-org/MiDaS UP/MiDaS                       # read, not copied
    git clone https://github.com/DepthAnything/Depth-Anything-V2 UP/Depth-Anything-V2
    PIP_FIND_LINKS= .venv/bin/pip install --no-deps --target UP/oldtimm timm==0.6.13 geffnet==1.0.2
    PYTHONPATH=UP/oldtimm .venv/bin/python -m tests.make_depth_upstream_fixture UP/MiDaS UP/Depth-Anything-V2

(timm 0.6.13 is the MiDaS-supported timm that imports on Python 3.11; geffnet is the pip package of
the gen-efficientnet repository MiDaS small loads through torch.hub.) Weights and inputs come from
``depth_upstream``; the file keeps input sizes, transformed photos and network outputs, sampled.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import depth_upstream as spec

DA_CONFIGS = {"vits": (64, [48, 96, 192, 384]), "vitb": (128, [96, 192, 384, 768]),
              "vitl": (256, [256, 512, 1024, 1024])}
MIDAS_BACKBONES = {"dpt_large_384": "vitl16_384", "dpt_hybrid_384": "vitb_rn50_384",
                   "dpt_beit_large_512": "beitl16_512"}


def upstream_network(arch_id: str) -> torch.nn.Module:
    if arch_id.startswith("depth_anything_v2_"):
        from depth_anything_v2.dpt import DepthAnythingV2
        encoder = arch_id.rsplit("_", 1)[1]
        features, channels = DA_CONFIGS[encoder]
        return DepthAnythingV2(encoder=encoder, features=features, out_channels=channels)
    if arch_id == "midas_v21_small_256":
        import geffnet
        # what MiDaS's torch.hub call returns, never with ImageNet weights (it asks for them without a path)
        torch.hub.load = lambda _repo, name, pretrained, exportable: getattr(geffnet, name)(
            pretrained=False, exportable=exportable)
        from midas.midas_net_custom import MidasNet_small
        return MidasNet_small(None, features=64, backbone="efficientnet_lite3", exportable=True,
                              non_negative=True, blocks={"expand": True})
    from midas.dpt_depth import DPTDepthModel
    return DPTDepthModel(path=None, backbone=MIDAS_BACKBONES[arch_id], non_negative=True)


def upstream_transform(arch_id: str, size: int | None = None):
    """The upstream input transform of ``arch_id`` (MiDaS's load_model / Depth Anything's image2tensor)."""
    import cv2
    if arch_id.startswith("depth_anything_v2_"):
        from depth_anything_v2.util.transform import NormalizeImage, PrepareForNet, Resize
        from torchvision.transforms import Compose
        return Compose([Resize(width=size or 518, height=size or 518, resize_target=False, keep_aspect_ratio=True,
                               ensure_multiple_of=14, resize_method="lower_bound",
                               image_interpolation_method=cv2.INTER_CUBIC),
                        NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), PrepareForNet()])
    from midas.model_loader import load_model
    _model, transform, _w, _h = load_model(torch.device("cpu"), None, arch_id, optimize=False, height=size)
    return transform


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("midas", help="a checkout of isl-org/MiDaS")
    parser.add_argument("depth_anything", help="a checkout of DepthAnything/Depth-Anything-V2")
    args = parser.parse_args(argv)
    sys.path[:0] = [args.midas, args.depth_anything]
    torch.set_num_threads(2)
    import timm
    print(f"timm {timm.__version__}, torch {torch.__version__}")
    out: dict[str, np.ndarray] = {}
    for arch_id, shapes in spec.NETWORK_INPUTS.items():
        start = time.perf_counter()
        network = upstream_network(arch_id).eval()
        for salt in range(8):
            network.load_state_dict(spec.published_weights(network.state_dict(), salt))
            with torch.inference_mode():
                predictions = [network(spec.network_input(arch_id, shape))[0].numpy() for shape in shapes]
            if min(p.std() for p in predictions) > 0.01:
                break
        else:
            raise RuntimeError(f"{arch_id}: every salt gives an all-zero output")
        out[f"salt/{arch_id}"] = np.asarray(salt)
        for shape, prediction in zip(shapes, predictions):
            assert prediction.shape == shape
            out[f"net/{arch_id}/{shape[0]}x{shape[1]}"] = spec.summary(prediction, spec.OUTPUT_STRIDE)
        print(f"{arch_id}: salt {salt}, std {predictions[-1].std():.3f}, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        del network
    for arch_id in spec.NETWORK_INPUTS:
        for requested in (None, 140 if arch_id.startswith("depth_anything") else 128):
            transform = upstream_transform(arch_id, requested)
            for shape in spec.PHOTO_SHAPES:
                image = transform({"image": spec.photo(shape) / 255.0})["image"]
                name = f"{arch_id}/{requested or 0}/{shape[0]}x{shape[1]}"
                out[f"size/{name}"] = np.asarray(image.shape[1:])
                if arch_id in spec.PIXEL_ARCHITECTURES and requested is None:
                    out[f"pixels/{name}"] = spec.summary(image, spec.PIXEL_STRIDE)
    for grid, target in spec.OUTPUT_RESIZES:
        prediction = torch.from_numpy(spec.network_output_grid(grid))[None, None]
        midas = F.interpolate(prediction, size=target, mode="bicubic", align_corners=False)  # MiDaS run.py
        depth_anything = F.interpolate(prediction, target, mode="bilinear", align_corners=True)  # infer_image
        for family, resized in (("midas", midas), ("depth_anything", depth_anything)):
            out[f"resize/{family}/{grid[0]}x{grid[1]}"] = spec.summary(resized[0, 0].numpy(), spec.RESIZE_STRIDE)
    spec.FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(spec.FIXTURE, **out)
    print(f"wrote {spec.FIXTURE} ({spec.FIXTURE.stat().st_size / 1e3:.0f} kB, {len(out)} arrays)")


if __name__ == "__main__":
    main()
