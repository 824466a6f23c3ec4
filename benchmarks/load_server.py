"""Load: concurrent clients with two different photos on a real server, per ``serve --workers`` count:
reconstructions/s, lost and mixed-up replies, latency percentiles, and the speed-up over the first count.

    PYTHONPATH=. .venv/bin/python benchmarks/load_server.py [--workers 1,2] [--threads 2] [--clients 8]
                                    [--requests 20] [--in-flight 2] [--max-queue 32] [--cheap] [--device cpu]

Each count runs its own server with ``--workers N --threads T`` (T torch threads split between the N
workers), warmed up with one request per worker. Each client keeps ``--in-flight`` requests
outstanding on its socket. Requests are the two photos (astronaut 512², Grace Hopper 512x600) with
the server's default options; ``--cheap`` sends 160-pixel thumbnails with the cheapest options
instead (the scheduler's overhead). ``busy`` appears only once clients x in-flight exceeds the queue;
a mixed reply belongs to the other photo (should be none). Nothing here asserts.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.server.process import LocalServer, free_address  # noqa: E402
from tests.conftest import _png, grace_hopper_path  # noqa: E402
from tests.fuzz_messages import CHEAP, small_photos  # noqa: E402
from tests.load_clients import run_load  # noqa: E402


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def run(args, workers: int, sized: list, params: dict) -> float:
    """One server with ``workers`` workers under the load; prints its figures, returns reconstructions/s."""
    others = os.getloadavg()[0]  # the machine's load before this server runs: other users of the CPUs
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), device=args.device,
                         extra_args=("--workers", str(workers), "--threads", str(args.threads),
                                     "--max-queue", str(args.max_queue)))
    server.start(timeout=300)
    try:
        run_load(server.address, sized, workers, 1, params, in_flight=1)  # every worker's lazy start-up
        report = run_load(server.address, sized, args.clients, args.requests, params, in_flight=args.in_flight)
    finally:
        server.stop()
    total = args.clients * args.requests
    rate = report.codes["ok"] / report.seconds
    print(f"--workers {workers} ({max(1, args.threads // workers)} torch thread(s) each): {rate:.2f} "
          f"reconstructions/s ({total} in {report.seconds:.1f} s); replies {dict(report.codes)}; "
          f"lost {total - sum(report.codes.values())}; mixed {len(report.mixed)}; "
          f"load average before {others:.2f}")
    print(f"    latency ms (send -> reply, queueing included): {report.percentiles()}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=counts, default=[1, 2], help="worker counts to compare, e.g. 1,2,4")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads, split between workers")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--cheap", action="store_true", help="thumbnails with the cheapest options")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from skimage import data

    photos = [_png(data.astronaut()), grace_hopper_path().read_bytes()]
    photos = small_photos(photos) if args.cheap else photos
    sized = [(photo, list(Image.open(io.BytesIO(photo)).size)) for photo in photos]
    params = CHEAP if args.cheap else {}
    print(f"# {args.clients} clients x {args.requests} requests, {args.in_flight} in flight each, "
          f"{'cheap thumbnails' if args.cheap else 'full photos, default options'}, {os.cpu_count()} CPUs")
    rates = {workers: run(args, workers, sized, params) for workers in args.workers}
    first = args.workers[0]
    for workers, rate in rates.items():
        if workers != first:
            print(f"--workers {workers} / --workers {first}: {rate / rates[first]:.2f}x")


if __name__ == "__main__":
    main()
