"""The server's scheduling over real sockets: time limits, internal errors, vanished clients, deadlines,
and a server killed mid-request. A stand-in pipeline (tests/server_doubles.py) paces the stages."""
import logging
import re
import subprocess
import sys
import threading
import time

import pytest
import zmq

from addon.server.process import free_address
from addon.wire import protocol
from addon.wire.client import Client
from addon.wire.protocol import ErrorCode, ProtocolError
from inference_server.config import ServerConfig
from inference_server.limits import RequestLimits

from .conftest import REPO
from .server_doubles import STAGES, StagedPipeline, running

LOCAL = "tcp://127.0.0.1:*"


def test_time_limit_stops_a_request_at_the_next_stage():
    pipeline = StagedPipeline(0.2)
    with running(pipeline, ServerConfig(bind=LOCAL, limits=RequestLimits(request_seconds=0.3))) as server:
        with Client(server.address, timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(ProtocolError) as info:
                client.reconstruct(b"photo")
            elapsed = time.monotonic() - started
    assert info.value.code == ErrorCode.TOO_LARGE and "limit of 0.3 s per request" in info.value.message
    assert elapsed < 0.2 * len(STAGES) * 0.8, elapsed  # well before the whole request would have run


def test_internal_error_reply_carries_an_error_id_not_the_exception(caplog):
    pipeline = StagedPipeline(0.0, failure=RuntimeError("secret detail at /opt/lib/cv2/resize.cpp:42"))
    with caplog.at_level(logging.ERROR, logger="faceforge.server"):
        with running(pipeline, ServerConfig(bind=LOCAL)) as server:
            with Client(server.address, timeout=30) as client:
                with pytest.raises(ProtocolError) as info:
                    client.reconstruct(b"photo")
                assert client.info()["models"] == ["staged stand-in"]  # and the server goes on
    assert info.value.code == ErrorCode.INTERNAL
    assert "secret" not in info.value.message and "/opt" not in info.value.message
    error_id = re.search(r"error id ([0-9a-f]{12})", info.value.message).group(1)
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert "Traceback" in record.getMessage() and "secret detail" in record.getMessage()


def _send_and_vanish(address: str, image: bytes) -> None:
    """A client that sends a request (no deadline, no cancel) and disappears once it is queued."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(address)
    protocol.send_frames(socket, protocol.encode_request("reconstruct", image.decode(), {}, {"image": image}))
    protocol.send_frames(socket, protocol.encode_request("info", "queued?"))
    while protocol.decode(socket.recv_multipart()).id != "queued?":  # the server reads a socket in order
        pass
    socket.close(linger=0)


def test_queued_work_of_vanished_clients_is_dropped(caplog):
    seconds_per_request = 0.1 * len(STAGES)
    pipeline = StagedPipeline(0.1)
    with caplog.at_level(logging.INFO, logger="faceforge.server"):
        with running(pipeline, ServerConfig(bind=LOCAL)) as server:
            for number in range(6):
                _send_and_vanish(server.address, f"gone-{number}".encode())
            with Client(server.address, timeout=30) as client:
                started = time.monotonic()
                reply = client.reconstruct(b"alive")
                waited = time.monotonic() - started
            assert not server._active
    assert reply.meta["image"] == "alive"
    # Six abandoned requests would have cost 4.2 s; each is stopped at its first stage boundary.
    assert waited < 3 * seconds_per_request, waited
    assert any("disconnected" in r.getMessage() for r in caplog.records)


def test_a_request_past_its_deadline_never_runs():
    pipeline = StagedPipeline(0.1)
    with running(pipeline, ServerConfig(bind=LOCAL)) as server:
        with Client(server.address, timeout=30) as client:
            first = client.send("reconstruct", {}, {"image": b"first"}, timeout=30)
            with pytest.raises(ProtocolError) as info:
                client.call("reconstruct", {}, {"image": b"impatient"}, timeout=0.3)
            assert info.value.code == ErrorCode.TIMEOUT
            assert client.receive(10).id == first
            assert client.reconstruct(b"next").meta["image"] == "next"
    assert b"impatient" not in pipeline.started and pipeline.started == [b"first", b"next"]


def test_clients_fail_within_their_deadline_when_the_server_is_killed_mid_request():
    address = free_address()
    process = subprocess.Popen([sys.executable, "-m", "tests.server_doubles", address, "1.0"], cwd=REPO,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "serving\n" and process.stdout.readline() == "ready\n"
        with Client(address, timeout=3) as client:
            running_now = threading.Event()
            request = client.send("reconstruct", {}, {"image": b"photo"}, timeout=3,
                                  on_progress=lambda report: running_now.set())
            with pytest.raises(ProtocolError):  # stops waiting once the request reports its first stage
                client.receive(10, cancel=running_now)
            process.kill()
            started = time.monotonic()
            with pytest.raises(ProtocolError) as info:
                client.receive(3)
            assert time.monotonic() - started < 4
            client.abandon(request)
        assert info.value.code == ErrorCode.TIMEOUT and "no reply" in info.value.message
    finally:
        process.kill()
        process.wait()
