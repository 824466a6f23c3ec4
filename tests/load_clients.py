"""Concurrent clients, each with its own photo, checking that every reply is theirs and timing it.

Shared by tests/test_server_load.py (a short run) and benchmarks/load_server.py (8 clients x 20).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from addon.wire.client import Client
from addon.wire.protocol import ProtocolError


@dataclass
class LoadReport:
    latencies: list = field(default_factory=list)   # seconds per successful request
    codes: Counter = field(default_factory=Counter)  # "ok" or error code -> count
    mixed: list = field(default_factory=list)        # replies that belonged to another photo
    seconds: float = 0.0

    def percentiles(self) -> dict:
        ms = np.asarray(self.latencies) * 1000
        return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)} | {"max": round(float(ms.max()), 1)}


def run_load(address: str, photos: list[tuple[bytes, list]], clients: int, per_client: int,
             params: dict, in_flight: int = 2, timeout: float = 300) -> LoadReport:
    """``clients`` threads, each sending ``per_client`` requests for its photo (``photos[i % len]`` =
    (bytes, expected image_size)) with up to ``in_flight`` outstanding on its one socket."""
    report = LoadReport()
    lock = threading.Lock()

    def client_thread(number: int) -> None:
        photo, size = photos[number % len(photos)]
        with Client(address, timeout=timeout) as client:
            sent: dict[str, float] = {}
            remaining = per_client
            while remaining or sent:
                while remaining and len(sent) < in_flight:
                    sent[client.send("reconstruct", params, {"image": photo}, timeout=timeout)] = time.monotonic()
                    remaining -= 1
                reply = client.receive(timeout)
                started = sent.pop(reply.id)  # a reply to an id this client never sent raises KeyError here
                with lock:
                    try:
                        result = client.reconstruction(reply)
                    except ProtocolError as err:
                        report.codes[err.code] += 1
                        continue
                    report.codes["ok"] += 1
                    report.latencies.append(time.monotonic() - started)
                    if result.meta["image_size"] != size:
                        report.mixed.append((number, result.meta["image_size"]))

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.monotonic() - started
    return report
