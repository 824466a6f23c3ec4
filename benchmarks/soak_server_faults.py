"""The long run of the server's fault tests, with figures: clients that never read, workers killed and
stopped under load, connection floods.

    PYTHONPATH=. .venv/bin/python benchmarks/soak_server_faults.py [--seconds 60] [--stalled 4]

1. Non-reading clients: a stand-in server (tests/server_doubles.py, 20 MB replies, default
   --max-unread-mb 128) and ``--stalled`` clients whose TCP window stays shut, each sending 12
   paced requests: the server's peak RSS growth, in all and per client.
2. Kill/stop churn: the real server (``serve --workers 2``, 2 s time limit, 2 s grace) under 3 clients
   sending small requests for ``--seconds`` while one worker is killed (SIGKILL) or stopped (SIGSTOP)
   every 6 s: requests sent, answered by kind, left unanswered (should be none), worker restarts.
3. Connection flood: a stand-in server (--max-connections 256, 64 per peer) and 40 peer addresses
   opening 30 idle TCP connections each, plus ZeroMQ clients that reconnect as soon as refused: the
   connections refused and evicted, the server's CPU, and the latency of a client's ``info`` meanwhile.

Nothing here asserts; tests/test_server_faults.py and tests/test_server_connections.py do, briefly.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zmq  # noqa: E402

from addon.server.process import LocalServer, free_address  # noqa: E402
from addon.wire.client import Client  # noqa: E402
from tests.conftest import grace_hopper_path  # noqa: E402
from tests.fuzz_messages import CHEAP, small_photos  # noqa: E402
from tests.test_server_connections import cpu_seconds, from_peer  # noqa: E402
from tests.test_server_faults import rss_mb, stall  # noqa: E402


def stand_in(*settings: str) -> tuple[subprocess.Popen, str]:
    address = free_address()
    process = subprocess.Popen([sys.executable, "-m", "tests.server_doubles", address, "0", *settings], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout.readline().strip() == "serving" and process.stdout.readline().strip() == "ready"
    return process, address


def non_reading_clients(stalled: int) -> None:
    server, address = stand_in("reply_mb=20")
    context = zmq.Context()
    try:
        with Client(address, timeout=30) as client:
            client.call("reconstruct", {}, {"image": b"warm-up"})
        before = rss_mb(server.pid)
        peaks = [stall(context, address, 12, server.pid) for _ in range(stalled)]  # one after another
        threads = [threading.Thread(target=lambda: peaks.append(stall(context, address, 12, server.pid)))
                   for _ in range(stalled)]
        for thread in threads:  # and all at once
            thread.start()
        for thread in threads:
            thread.join()
        growth = max(peaks) - before
        print(f"non-reading clients: {stalled} in turn, then {stalled} at once, 12 paced replies of 20 MB each: "
              f"server RSS {before:.0f} MB -> peak {max(peaks):.0f} MB (+{growth:.0f} MB, "
              f"{growth / stalled:.0f} MB per client at once; bound 128 MB per connection)")
    finally:
        context.destroy(linger=0)
        server.kill()


def churn(seconds: float) -> None:
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), device="cpu",
                         extra_args=("--workers", "2", "--threads", "2", "--max-request-seconds", "2",
                                     "--worker-grace-seconds", "2"))
    server.start(timeout=300)
    photos = small_photos([grace_hopper_path().read_bytes()])
    outcomes: collections.Counter = collections.Counter()
    stop = time.monotonic() + seconds

    def client_loop() -> None:
        with Client(server.address, timeout=60) as client:
            while time.monotonic() < stop:
                outcomes["sent"] += 1
                try:
                    reply = client.call("reconstruct", CHEAP, {"image": random.choice(photos)}, timeout=60)
                    outcomes["ok" if reply.ok else reply.error.code] += 1
                except Exception as exc:  # noqa: BLE001 - counted, not raised: this is a measurement
                    outcomes[getattr(exc, "code", type(exc).__name__)] += 1

    def chaos() -> None:
        kind = 0
        while time.monotonic() < stop - 6:
            time.sleep(6)
            with Client(server.address, timeout=10) as client:
                workers = [w for w in client.info()["workers"] if w["pid"] and w["state"] != "down"]
            if workers:
                victim = random.choice(workers)["pid"]
                os.kill(victim, (signal.SIGKILL, signal.SIGSTOP)[kind % 2])
                outcomes[("killed", "stopped")[kind % 2]] += 1
                kind += 1

    threads = [threading.Thread(target=client_loop) for _ in range(3)] + [threading.Thread(target=chaos)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with Client(server.address, timeout=10) as client:
            restarts = sum(w["restarts"] for w in client.info()["workers"])
        answered = sum(count for key, count in outcomes.items() if key not in ("sent", "killed", "stopped"))
        print(f"kill/stop churn for {seconds:.0f} s: {outcomes['killed']} workers killed, {outcomes['stopped']} "
              f"stopped, {restarts} restarts; {outcomes['sent']} requests, {answered} answered "
              f"({', '.join(f'{key} {count}' for key, count in sorted(outcomes.items()) if key not in ('sent', 'killed', 'stopped'))}); "
              f"server alive: {server.running}")
    finally:
        server.stop()


def flood(seconds: float) -> None:
    server, address = stand_in()
    host, port = address.removeprefix("tcp://").split(":")
    context = zmq.Context()
    idle, latencies = [], []
    try:
        before = cpu_seconds(server.pid)
        for peer in range(40):
            for _ in range(30):
                connection = socket.socket()
                connection.bind((f"127.0.1.{peer + 1}", 0))
                connection.connect((host, int(port)))
                idle.append(connection)
        dealers = [from_peer(context, address, f"127.0.2.{n % 8 + 1}") for n in range(600)]
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.monotonic()
            with Client(address, timeout=30) as client:
                state = client.info()["connections"]
            latencies.append(time.monotonic() - started)
            time.sleep(0.5)
        latencies.sort()
        cpu = (cpu_seconds(server.pid) - before) / seconds
        print(f"connection flood: 1,200 idle TCP connections from 40 peers + 600 reconnecting ZeroMQ clients from 8, "
              f"{seconds:.0f} s: open {state['open']} (max {state['max']}), refused {state['refused']:,}, evicted "
              f"{state['evicted']:,}; server CPU {cpu:.0%} of a core; a new client's info: median "
              f"{latencies[len(latencies) // 2] * 1000:.0f} ms, worst {latencies[-1] * 1000:.0f} ms "
              f"({len(latencies)} calls)")
        for dealer in dealers:
            dealer.close(linger=0)
    finally:
        for connection in idle:
            connection.close()
        context.destroy(linger=0)
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--stalled", type=int, default=4)
    args = parser.parse_args()
    non_reading_clients(args.stalled)
    flood(min(args.seconds, 30))
    churn(args.seconds)


if __name__ == "__main__":
    main()
