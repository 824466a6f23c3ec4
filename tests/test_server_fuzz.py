"""Thousands of hostile messages of every family against a real server, valid requests interleaved.

Deterministic (fixed seed). The server must answer every message with the documented reply, never
``internal``, keep serving the valid requests, hold its memory, and keep its log short.
"""
import re

import pytest

from addon.wire.client import Client

from . import fuzz_messages as fuzz

SEED = 20261122
COUNT = 3000
RSS_GROWTH_BOUND_MB = 150  # after warm-up; the fuzz server refuses photos over 4 MP before decoding them


@pytest.fixture(scope="module")
def fuzz_server(limited_server):
    return limited_server


def test_every_hostile_message_gets_its_documented_reply(fuzz_server, astronaut_png, grace_hopper_jpg):
    photos = fuzz.small_photos([astronaut_png, grace_hopper_jpg])
    warm_up = [fuzz.valid_reconstruct(n, photos) for n in range(4)]
    assert not fuzz.run(fuzz_server.address, warm_up).problems()
    rss_before = fuzz.rss_mb(fuzz_server.pid)

    report = fuzz.run(fuzz_server.address, fuzz.cases(COUNT, SEED, photos))
    print(f"\n{len(report.outcomes)} messages in {report.seconds:.1f} s\n{report.table()}")

    assert fuzz_server.running
    assert report.problems() == []
    families = {out.case.family for out in report.outcomes}
    assert families == set(fuzz.FAMILIES)
    valid = [out for out in report.outcomes if out.case.family == "valid" and out.case.worker]
    assert len(valid) == COUNT // fuzz.RECONSTRUCT_EVERY and all(out.code == fuzz.OK for out in valid)
    assert fuzz.rss_mb(fuzz_server.pid) - rss_before < RSS_GROWTH_BOUND_MB
    with Client(fuzz_server.address, timeout=10) as client:
        assert client.info()["limits"]["texture_size"] == 1024


def test_the_log_survives_the_flood(fuzz_server):
    """Runs after the fuzz run: rejected requests are logged rate-limited and escaped."""
    log = open(fuzz_server.log_path, encoding="utf-8", errors="replace").read()
    rejected = log.count("rejected request")
    assert 20 <= rejected < 600, rejected
    assert re.search(r"\d+ similar messages suppressed", log)
    assert not re.search(r"^FORGED", log, re.MULTILINE)  # a newline in an id never starts a line
    assert "Traceback" not in log and "internal error" not in log
