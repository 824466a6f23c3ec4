"""Workers that die while their replacement loads, and workers that hang: the server keeps serving.

Stand-in pipelines (tests/server_doubles.py) in real spawned worker processes behind a real ROUTER:
what is tested is the I/O thread's bookkeeping, which does not depend on what the models compute.
"""
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from addon.server.process import free_address
from addon.wire import protocol
from addon.wire.client import Client
from addon.wire.protocol import ErrorCode, ProtocolError
from inference_server.config import ServerConfig
from inference_server.limits import RequestLimits

from .conftest import REPO
from .server_doubles import StagedPipeline, running
from .test_server_workers import LOCAL, alive, wait_for


def worker_list(address: str) -> list[dict]:
    with Client(address, timeout=10) as client:
        return client.info()["workers"]


def pid_of(address: str, index: int, state: str | None = None) -> int | None:
    worker = worker_list(address)[index]
    return worker["pid"] if state is None or worker["state"] == state else None


def test_a_worker_killed_again_and_again_while_it_loads_never_stops_the_server():
    """The former server exited (status 1) when a restarting worker died while loading its models, and the
    request running on the healthy worker got no reply."""
    config = ServerConfig(bind=LOCAL, workers=2)
    with running(functools.partial(StagedPipeline, 0.3, load_seconds=1.5), config) as server:
        with Client(server.address, timeout=60) as client:
            long = client.send("reconstruct", {}, {"image": b"on the healthy worker"})
            assert wait_for(lambda: any(w["state"] == "busy" for w in worker_list(server.address)), 10)
            healthy = next(w["index"] for w in worker_list(server.address) if w["state"] == "busy")
            victim = 1 - healthy
            killed = []
            for _ in range(3):  # the first death restarts at once; each death while loading doubles the wait
                assert wait_for(lambda: worker_list(server.address)[victim]["state"] in ("idle", "starting")
                                and pid_of(server.address, victim) not in killed, 20)
                pid = pid_of(server.address, victim)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                assert wait_for(lambda: not alive(pid), 5)
            reply = client.receive(30)
            assert reply.ok and reply.id == long and reply.result["image"] == "on the healthy worker"
            assert wait_for(lambda: worker_list(server.address)[victim]["state"] == "idle", 30)
            assert client.reconstruct(b"after the churn").meta["image"] == "after the churn"
        final = worker_list(server.address)[victim]
        assert final["restarts"] == 3 and final["pid"] not in killed and alive(final["pid"])


def test_a_worker_that_fails_to_load_again_is_retried_while_the_others_serve(tmp_path):
    """Models that load at start but not on a restart (a checkpoint deleted meanwhile): the server logs it,
    retries with back-off, and answers requests on the worker it still has."""
    flag = tmp_path / "broken"
    config = ServerConfig(bind=LOCAL, workers=2)
    with running(functools.partial(FailsWhenFlagged, str(flag)), config) as server:
        flag.write_text("restarts fail")
        os.kill(pid_of(server.address, 0), signal.SIGKILL)
        assert wait_for(lambda: worker_list(server.address)[0]["state"] != "idle", 5)
        with Client(server.address, timeout=30) as client:
            for number in range(3):
                assert client.reconstruct(f"photo {number}".encode()).meta["image"] == f"photo {number}"
            assert wait_for(lambda: worker_list(server.address)[0]["restarts"] >= 2, 10)
            assert worker_list(server.address)[0]["state"] in ("down", "starting")
            flag.unlink()
            assert wait_for(lambda: worker_list(server.address)[0]["state"] == "idle", 30)
            assert client.reconstruct(b"both again").meta["image"] == "both again"


class FailsWhenFlagged(StagedPipeline):
    """A stand-in whose models fail to load while the file ``flag`` exists."""

    def __init__(self, flag: str):
        if os.path.exists(flag):
            raise RuntimeError("the checkpoint is gone")
        super().__init__(0.0)


@pytest.mark.parametrize("timeout_ms, request_seconds, code, said", [
    (None, 0.5, ErrorCode.TOO_LARGE, "limit of 0.5 s per request"),
    (800, 30.0, ErrorCode.TIMEOUT, "its client's deadline passed")])
def test_a_stopped_worker_process_is_answered_for_and_replaced(timeout_ms, request_seconds, code, said):
    """kill -STOP: the former server never answered the request (timeout_ms and the time limit alike) and
    the worker's slot was lost for good."""
    config = ServerConfig(bind=LOCAL, workers=2, limits=RequestLimits(request_seconds=request_seconds),
                          worker_grace_seconds=0.5)
    with running(functools.partial(StagedPipeline, 0.05), config) as server:
        with Client(server.address, timeout=30) as client:
            request = client.send("reconstruct", {}, {"image": b"hangs"},
                                  timeout=timeout_ms / 1000 if timeout_ms else None)
            assert wait_for(lambda: any(w["state"] == "busy" for w in worker_list(server.address)), 10)
            (hung,) = [w for w in worker_list(server.address) if w["state"] == "busy"]
            os.kill(hung["pid"], signal.SIGSTOP)
            sent = time.monotonic()
            reply = client.receive(10)
            assert time.monotonic() - sent < 5 and reply.id == request
            assert reply.error.code == code and said in reply.error.message and "hung" in reply.error.message
            assert wait_for(lambda: not alive(hung["pid"]), 10)
            assert wait_for(lambda: worker_list(server.address)[hung["index"]]["state"] == "idle", 20)
            replies = [client.send("reconstruct", {}, {"image": b"again %d" % n}) for n in range(2)]  # both workers
            assert all(client.receive(10).ok for _ in replies)
        assert worker_list(server.address)[hung["index"]]["restarts"] == 1


def test_a_hung_thread_worker_is_answered_and_its_late_reply_dropped():
    """``--workers 1``: the thread cannot be killed; its request is answered on time, the reply it sends
    when it wakes is dropped, and it serves the next request."""
    config = ServerConfig(bind=LOCAL, limits=RequestLimits(request_seconds=0.3), worker_grace_seconds=0.3)
    pipeline = StagedPipeline(1.5)
    with running(pipeline, config) as server:
        with Client(server.address, timeout=30) as client:
            sent = time.monotonic()
            with pytest.raises(ProtocolError) as error:
                client.reconstruct(b"a stage of 1.5 s")
            assert time.monotonic() - sent < 1.4  # before the stage ended
            assert error.value.code == ErrorCode.TOO_LARGE and "cannot be replaced" in error.value.message
            assert worker_list(server.address)[0]["state"] == "hung"
            assert wait_for(lambda: worker_list(server.address)[0]["state"] == "idle", 5)
            pipeline.seconds_per_stage = 0.0
            assert client.reconstruct(b"next").meta["image"] == "next"
            assert client.info()["workers"][0]["served"] == 2


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024


def stall(context: zmq.Context, address: str, requests: int, server_pid: int) -> float:
    """A client whose TCP window stays shut sends ``requests`` paced requests, then closes; the server's peak RSS."""
    stalled = context.socket(zmq.DEALER)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.connect(address)
    peak = 0.0
    for number in range(requests):  # paced: each request has run before the next is sent
        protocol.send_frames(stalled, protocol.encode_request("reconstruct", f"r{number}", {}, {"image": b"unread"}))
        time.sleep(0.4)
        peak = max(peak, rss_mb(server_pid))
    stalled.close(linger=0)
    return peak


def test_a_client_that_never_reads_its_replies_pins_at_most_the_unread_bound(tmp_path):
    """The former server kept every reply to a client that does not read (its TCP window shut) until it
    disconnected: 12 replies of 20 MB grew it by 240 MB. Bounded at 60 MB per connection, the server holds
    at most that: it refuses further work with ``busy``, and serves a reading client all the while."""
    address = free_address()
    server = subprocess.Popen([sys.executable, "-m", "tests.server_doubles", address, "0", "reply_mb=20",
                               "max_unread_mb=60"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=(tmp_path / "server.log").open("w"), text=True)
    context = zmq.Context()
    try:
        assert server.stdout.readline().strip() == "serving" and server.stdout.readline().strip() == "ready"
        with Client(address, timeout=30) as client:  # warm: one reply read, the allocator primed
            assert client.call("reconstruct", {}, {"image": b"warm-up"}).result["image"] == "warm-up"
        before = rss_mb(server.pid)
        peak = stall(context, address, 12, server.pid)
        with Client(address, timeout=30) as client:  # another client is served meanwhile
            assert client.call("reconstruct", {}, {"image": b"a reader"}).result["image"] == "a reader"
        assert peak - before < 60 + 45, (before, peak)  # the bound, the client's own buffers, allocator slack
        log = (tmp_path / "server.log").read_text()
        assert "limit of 60 MB per connection" in log and "limit 60 MB per connection" not in log
        assert "rejected request 'r11'" in log and "read them first" in log  # busy, before any work
        # What was held for a closed connection is released: a second stalled client reuses that memory.
        assert stall(context, address, 6, server.pid) - peak < 25
    finally:
        context.destroy(linger=0)
        server.kill()
        server.wait()


def test_a_restarted_worker_that_hangs_while_loading_is_killed_and_retried():
    """Stopped while loading its models, a worker never became ready and its slot was lost for good."""
    config = ServerConfig(bind=LOCAL, workers=2)
    with running(functools.partial(StagedPipeline, 0.0, load_seconds=1.0), config) as server:
        server._pool.start_seconds = 2.0  # the default, 300 s, is for real model loads
        first = pid_of(server.address, 0)
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: pid_of(server.address, 0) != first and worker_list(server.address)[0]["state"]
                        == "starting", 10)
        loading = pid_of(server.address, 0)
        os.kill(loading, signal.SIGSTOP)
        assert wait_for(lambda: not alive(loading), 10)
        assert wait_for(lambda: worker_list(server.address)[0]["state"] == "idle", 20)
        assert worker_list(server.address)[0]["restarts"] == 2
