"""Per-image latency of each depth network at its native resolution (random weights).

Times ``DepthEstimator.predict`` on a 512x512 face crop (the pipeline's aligned crop): resize +
normalise, the network, and resizing the output back to the crop; median of N runs after one
warm-up. On CPU with 2 threads by default; on CUDA the estimator runs in half precision. Weights
are random (values do not change the cost) and are written straight into a network laid out on the
``meta`` device, so even ViT-L costs no initialisation time. A network whose warm-up run exceeds
``--max-seconds`` is reported from that one run. Wall and process CPU time are both printed: on a
shared machine only the CPU time is comparable. Also times ``fuse_depth`` on the 256x256 depth grid.

    .venv/bin/python benchmarks/bench_depth.py [--device cpu|cuda] [--threads 2] [--runs 3] [--only ID,...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_server.depth import ARCHITECTURES, DepthConfig, DepthEstimator, build_network  # noqa: E402
from inference_server.depth.checkpoints import fill_unsaved_buffers  # noqa: E402
from inference_server.depth.estimator import network_input_size  # noqa: E402
from inference_server.depth.fuse import fuse_depth  # noqa: E402


def timing_network(arch, device: str):
    """The architecture with small random weights, without timm's slow per-tensor initialisation."""
    model = build_network(arch, "meta").to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if tensor.dim() >= 2:  # fan-in scaling keeps activations O(1): no denormals, which are slow
                tensor.normal_(0, tensor[0].numel() ** -0.5, generator=generator)
            elif name.endswith(("running_var", "gamma", "gamma_1", "gamma_2", "weight")):
                tensor.fill_(1.0)  # norm scales and layer scales
            else:
                tensor.zero_()
    fill_unsaved_buffers(model, set(model.state_dict()))
    return model.eval()


def face_crop() -> np.ndarray:
    from skimage import data

    return cv2.resize(np.ascontiguousarray(data.astronaut()[0:300, 110:410]), (512, 512), interpolation=cv2.INTER_AREA)


def time_predict(estimator: DepthEstimator, crop: np.ndarray, runs: int,
                 max_seconds: float) -> tuple[float, float, int]:
    """(median wall ms, median process CPU ms, runs). CPU time is what the work costs whatever else
    shares the cores; with T threads an idle machine's wall time lies between CPU / T and CPU."""
    samples = []
    for run in range(runs + 1):  # run 0 is the warm-up: kernel selection, allocator
        wall, cpu = time.perf_counter(), time.process_time()
        estimator.predict(crop)
        samples.append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
        if run == 0 and samples[0][0] > max_seconds * 1000:
            return samples[0][0], samples[0][1], 1
    timed = samples[1:]
    return statistics.median(s[0] for s in timed), statistics.median(s[1] for s in timed), runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--only", default="", help="comma-separated architecture ids")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    crop = face_crop()
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"device: {device_name}; torch {torch.__version__}")
    print(f"{'network':<24}{'input':>10}{'params':>9}{'wall ms':>10}{'CPU ms':>10}{'runs':>6}")
    wanted = [a for a in ARCHITECTURES.values() if not args.only or a.id in args.only.split(",")]
    for arch in wanted:
        network = timing_network(arch, args.device)
        estimator = DepthEstimator(DepthConfig(checkpoint="", device=args.device), network=network)
        params = sum(p.numel() for p in network.parameters()) / 1e6
        wall, cpu, runs = time_predict(estimator, crop, args.runs, args.max_seconds)
        h, w = network_input_size(arch, 512, 512)
        print(f"{arch.id:<24}{f'{h}x{w}':>10}{params:>8.1f}M{wall:>10.0f}{cpu:>10.0f}{runs:>6}", flush=True)
        del estimator, network
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    mask = ((xx - 128) / 92.0) ** 2 + ((yy - 128) / 118.0) ** 2 < 1
    prior = np.where(mask, 0.05, 0.0).astype(np.float32)
    network_out = (prior + rng.normal(0, 0.001, prior.shape)).astype(np.float32)
    start = time.perf_counter()
    for _ in range(10):
        fuse_depth(network_out, prior, mask)
    print(f"fuse_depth 256x256: {(time.perf_counter() - start) * 100:.1f} ms")


if __name__ == "__main__":
    main()
