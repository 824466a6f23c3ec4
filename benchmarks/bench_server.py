"""Per-stage latency of the reconstruction, ZeroMQ round trip, and pure protocol overhead.

    .venv/bin/python benchmarks/bench_server.py [--runs 7] [--threads 2] [--device cpu]

Targets: server reconstruct <= 150 ms median for a 1024^2 photo; protocol overhead <= 5 ms for a
10k-vertex reply. Prints medians (ms); nothing here asserts.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq
from PIL import Image

from addon.server.process import LocalServer, free_address
from addon.wire import protocol
from addon.wire.client import Client, Reconstruction

REPO = Path(__file__).resolve().parents[1]


def photo(size: int) -> bytes:
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def median_ms(samples) -> float:
    return round(statistics.median(samples) * 1000, 1)


def bench_stages(image: bytes, runs: int, device: str) -> dict:
    import torch

    from inference_server.pipeline import FacePipeline, resolve_device

    pipeline = FacePipeline(resolve_device(device))
    pipeline.reconstruct(image)  # warm-up: lazy initialisation, caches
    stages: dict[str, list] = {}
    for _ in range(runs):
        start = time.perf_counter()
        result = pipeline.reconstruct(image)
        total = time.perf_counter() - start
        face = result.faces[0]
        start = time.perf_counter()
        protocol.encode_reply("b", result.meta, protocol.face_payloads(0, face.arrays))
        stages.setdefault("encode", []).append(time.perf_counter() - start)
        for name, ms in result.meta["timings_ms"].items():
            stages.setdefault(name, []).append(ms / 1000)
        stages.setdefault("total", []).append(total)
    return {name: median_ms(values) for name, values in stages.items()} | {"vertices": len(face.arrays["vertices"]),
                                                                         "torch_threads": torch.get_num_threads()}


def bench_round_trip(address: str, image: bytes, runs: int) -> dict:
    with Client(address, timeout=120) as client:
        client.reconstruct(image)
        trips, server = [], []
        for _ in range(runs):
            start = time.perf_counter()
            result = client.reconstruct(image)
            trips.append(time.perf_counter() - start)
            server.append(sum(result.meta["timings_ms"].values()) / 1000)
    return {"round_trip": median_ms(trips), "server_compute": median_ms(server),
            "transport_and_codec": median_ms(np.array(trips) - np.array(server))}


def bench_protocol_overhead(vertices: int, runs: int) -> dict:
    """A ROUTER that answers every request with a prepared reconstruct-sized reply, over TCP loopback."""
    rng = np.random.default_rng(0)
    arrays = {"vertices": rng.random((vertices, 3), dtype=np.float32),
              "faces": rng.integers(0, vertices, (2 * vertices, 3), dtype=np.int32),
              "uvs": rng.random((vertices, 2), dtype=np.float32),
              "texture": rng.integers(0, 255, (512, 512, 3), dtype=np.uint8),
              "detail": rng.random((512, 512), dtype=np.float32), "depth": rng.random((256, 256), dtype=np.float32),
              "mask": np.ones((256, 256), bool), "landmarks": rng.random((478, 3), dtype=np.float32),
              "landmarks_image": rng.random((478, 2), dtype=np.float32)}
    meta = {"faces": [{"index": 0}], "timings_ms": {}}
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if router.poll(50):
                frames = router.recv_multipart(copy=False)
                request = protocol.decode(frames[1:])
                reply = protocol.encode_reply(request.id, meta, protocol.face_payloads(0, arrays))
                protocol.send_frames(router, reply, prefix=[frames[0].bytes])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    image = b"x" * 200_000  # a typical JPEG's size travels with the request
    samples = []
    with Client(f"tcp://127.0.0.1:{port}", timeout=10) as client:
        for i in range(runs + 3):
            start = time.perf_counter()
            Reconstruction.from_message(client.call("reconstruct", {}, {"image": image}))
            if i >= 3:
                samples.append(time.perf_counter() - start)
    stop.set()
    thread.join()
    router.close(0)
    megabytes = sum(a.nbytes for a in arrays.values()) / 1e6
    return {"vertices": vertices, "reply_mb": round(megabytes, 2), "median_ms": median_ms(samples),
            "p90_ms": round(float(np.percentile(samples, 90)) * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"# device={args.device} torch_threads={args.threads} runs={args.runs}")
    print("protocol overhead (loopback, encode+send+receive+decode, no compute):")
    for vertices in (10_000, 100_000):
        print("  ", bench_protocol_overhead(vertices, args.runs * 3))
    photos = {size: photo(size) for size in (512, 1024)}
    for size, image in photos.items():
        print(f"in-process stages, {size}x{size} JPEG (median ms):")
        print("  ", bench_stages(image, args.runs, args.device))
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), device=args.device,
                         extra_args=("--threads", str(args.threads)))
    server.start(timeout=300)
    try:
        for size, image in photos.items():
            print(f"server round trip, {size}x{size} JPEG (median ms):")
            print("  ", bench_round_trip(server.address, image, args.runs))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
