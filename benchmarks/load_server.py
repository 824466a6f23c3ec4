"""Load: concurrent clients with two different photos on one real server; latency percentiles.

    PYTHONPATH=. .venv/bin/python benchmarks/load_server.py [--clients 8] [--requests 20] [--in-flight 2]
                                                            [--max-queue 32] [--device cpu]

Each client keeps ``--in-flight`` requests outstanding on its socket. Prints the reply codes (busy
appears only once clients x in-flight exceeds the queue), replies that belonged to another photo
(should be none) and latency percentiles. Nothing here asserts.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.server_process import LocalServer, free_address  # noqa: E402
from tests.conftest import _png, grace_hopper_path  # noqa: E402
from tests.fuzz_messages import CHEAP, small_photos  # noqa: E402
from tests.load_clients import run_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from skimage import data

    photos = small_photos([_png(data.astronaut()), grace_hopper_path().read_bytes()])
    sized = [(photo, list(Image.open(io.BytesIO(photo)).size)) for photo in photos]
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), device=args.device,
                         extra_args=("--max-queue", str(args.max_queue)))
    server.start(timeout=300)
    try:
        report = run_load(server.address, sized, args.clients, args.requests, CHEAP, in_flight=args.in_flight)
    finally:
        server.stop()
    total = args.clients * args.requests
    print(f"{args.clients} clients x {args.requests} requests ({args.in_flight} in flight each, queue "
          f"{args.max_queue}) in {report.seconds:.1f} s: {total / report.seconds:.2f} requests/s")
    print(f"replies: {dict(report.codes)} of {total}; lost: {total - sum(report.codes.values())}; "
          f"mixed: {len(report.mixed)}")
    print(f"latency ms (send -> reply, queueing included): {report.percentiles()}")


if __name__ == "__main__":
    main()
