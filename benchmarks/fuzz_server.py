"""The long fuzz run: 10,000+ hostile messages of every family against a real server, with figures.

    PYTHONPATH=. .venv/bin/python benchmarks/fuzz_server.py [--count 10000] [--seed 1] [--device cpu]

The messages and their expected replies are tests/fuzz_messages.py (the CI suite sends 3,000 of them).
Prints a table per family (sent, replies, latency, reply codes), the expectation breaks (should be
none), the server's memory before and after, and its log size. Nothing here asserts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.server.process import LocalServer, free_address  # noqa: E402
from tests import fuzz_messages as fuzz  # noqa: E402
from tests.conftest import grace_hopper_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    from skimage import data

    from tests.conftest import _png

    photos = fuzz.small_photos([_png(data.astronaut()), grace_hopper_path().read_bytes()])
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), device=args.device,
                         extra_args=fuzz.FUZZ_SERVER_ARGS)
    server.start(timeout=300)
    try:
        fuzz.run(server.address, [fuzz.valid_reconstruct(n, photos) for n in range(4)])  # warm-up
        rss_before = fuzz.rss_mb(server.pid)
        report = fuzz.run(server.address, fuzz.cases(args.count, args.seed, photos))
        rss_after = fuzz.rss_mb(server.pid)
        alive = server.running
    finally:
        server.stop()
    log = Path(server.log_path).read_text(errors="replace")
    problems = report.problems()
    print(f"{len(report.outcomes)} messages in {report.seconds:.1f} s "
          f"({len(report.outcomes) / report.seconds:.0f}/s), seed {args.seed}\n")
    print(report.table())
    print(f"\nserver alive at the end: {alive}")
    print(f"expectation breaks: {len(problems)}" + "".join(f"\n  {p}" for p in problems[:20]))
    print(f"internal errors: {sum(o.code == 'internal' for o in report.outcomes)}")
    print(f"server RSS: {rss_before:.0f} MB after warm-up -> {rss_after:.0f} MB ({rss_after - rss_before:+.0f} MB)")
    print(f"server log: {len(log.splitlines())} lines, {len(log) / 1024:.0f} KB; "
          f"{log.count('rejected request')} 'rejected' lines, {log.count('similar messages suppressed')} "
          "'suppressed' lines")


if __name__ == "__main__":
    main()
