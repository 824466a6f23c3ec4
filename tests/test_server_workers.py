"""``serve --workers 2``: two model-owning worker processes behind one ROUTER, over real sockets.

A real server with the real pipeline answers concurrent clients from both workers without mixing
replies, cancels a request running in a worker process, and survives a worker killed mid-request
(only that request is lost; the worker restarts); killed itself, it takes its workers along. The
scheduling across processes (time limit, client deadline, clean stop) runs on stand-in pipelines
(tests/server_doubles.py) in spawned workers, which start in a fraction of a second.
"""
import functools
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from addon.wire.client import Client
from addon.wire.protocol import ErrorCode, ProtocolError
from inference_server.config import ServerConfig
from inference_server.limits import RequestLimits
from inference_server.server import REMOTE_INFO_KEYS

from .batch_fixtures import blender_command, load_summary, needs_blender
from .conftest import REPO, start_server
from .fuzz_messages import CHEAP, small_photos
from .load_clients import run_load
from .server_doubles import StagedPipeline, running

# Heavy late stages (mesh, detail): a request stopped at its first stage has most of its work ahead.
HEAVY = {"resolution": 400, "taubin_passes": 50, "texture_size": 2048, "detail_sigma": 20.0}
LOCAL = "tcp://127.0.0.1:*"


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an exited child nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def workers(address: str) -> list[dict]:
    with Client(address, timeout=10) as client:
        return client.info()["workers"]


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("workers") / "server.log", "--workers", "2", "--threads", "2")
    try:
        yield server
    finally:
        server.stop()


def test_info_reports_two_worker_processes_with_the_threads_split(two_workers):
    with Client(two_workers.address, timeout=10) as client:
        info = client.info()
    assert info["worker_count"] == 2 and info["threads"] == 1
    assert [(w["kind"], w["state"], w["threads"]) for w in info["workers"]] == [("process", "idle", 1)] * 2
    pids = {w["pid"] for w in info["workers"]}
    assert len(pids) == 2 and two_workers.pid not in pids and all(alive(pid) for pid in pids)


def test_the_io_process_leaves_torch_to_its_workers(two_workers):
    """The server's own process only routes messages: torch and the models live in the workers."""
    def torch_loaded(pid: int) -> bool:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()

    assert not torch_loaded(two_workers.pid)
    assert all(torch_loaded(w["pid"]) for w in workers(two_workers.address))


@pytest.mark.parametrize("flags, status, said", [
    (("--device", "cuda:7"), 2, "--device cuda"), (("--depth-model", "no_such_model"), 6, "--depth-model: depth model"),
])
def test_an_unusable_device_or_checkpoint_stops_the_workers_with_its_exit_status(flags, status, said):
    """Found by the workers (the I/O process has no torch), said in one line with the usual status."""
    command = [sys.executable, "-m", "inference_server", "serve", "--workers", "2", "--bind", LOCAL, *flags]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == status and result.stderr.strip().splitlines()[-1].startswith(f"error: {said}")


def test_a_damaged_operator_checkpoint_is_one_line_not_a_traceback(tmp_path):
    """``serve --depth-model`` with a file that exists but holds nothing usable: one ``error:`` line
    and exit 3 (bad input), not the worker's traceback followed by a generic failure."""
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    command = [sys.executable, "-m", "inference_server", "serve", "--bind", LOCAL, "--depth-model", str(empty)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --depth-model: the depth checkpoint {empty}")


def test_concurrent_clients_get_their_own_replies_from_both_workers(two_workers, astronaut_png, grace_hopper_jpg):
    photos = small_photos([astronaut_png, grace_hopper_jpg])
    sized = [(photo, list(Image.open(io.BytesIO(photo)).size)) for photo in photos]
    assert sized[0][1] != sized[1][1]  # a mixed-up reply would show in its image size
    before = [w["served"] for w in workers(two_workers.address)]
    report = run_load(two_workers.address, sized, clients=4, per_client=2, params=CHEAP, in_flight=2)
    after = [w["served"] for w in workers(two_workers.address)]
    assert report.codes == {"ok": 8} and report.mixed == []
    assert sum(after) - sum(before) == 8 and all(a > b for a, b in zip(after, before))  # both worked


def test_cancel_stops_a_request_running_in_a_worker_process(two_workers, grace_hopper_jpg):
    with Client(two_workers.address, timeout=120) as client:
        running_now = threading.Event()
        request = client.send("reconstruct", HEAVY, {"image": grace_hopper_jpg},
                              on_progress=lambda report: running_now.set())
        with pytest.raises(ProtocolError):  # stops waiting once the request reports its first stage
            client.receive(60, cancel=running_now)
        assert client.call("cancel", {"id": request}).result == {"cancelled": True}
        reply = client.receive(60)
    assert reply.id == request and not reply.ok and reply.error.code == ErrorCode.CANCELLED


def test_a_killed_worker_loses_only_its_request_and_restarts(two_workers, grace_hopper_jpg, astronaut_png):
    with Client(two_workers.address, timeout=120) as client:
        running_now = threading.Event()
        victim = client.send("reconstruct", HEAVY, {"image": grace_hopper_jpg},
                             on_progress=lambda report: running_now.set())
        with pytest.raises(ProtocolError):
            client.receive(60, cancel=running_now)
        (busy,) = [w for w in workers(two_workers.address) if w["state"] == "busy"]
        survivor = client.send("reconstruct", {"resolution": 60}, {"image": astronaut_png})
        os.kill(busy["pid"], signal.SIGKILL)
        started = time.monotonic()
        replies = {reply.id: reply for reply in (client.receive(60), client.receive(60))}
        assert time.monotonic() - started < 5
    assert replies[victim].error.code == ErrorCode.WORKER_LOST and "restarted" in replies[victim].error.message
    assert replies[survivor].ok and replies[survivor].result["image_size"] == [512, 512]
    assert wait_for(lambda: all(w["state"] == "idle" for w in workers(two_workers.address)), 120)
    restarted = workers(two_workers.address)[busy["index"]]
    assert restarted["restarts"] == 1 and restarted["pid"] != busy["pid"] and not alive(busy["pid"])
    with Client(two_workers.address, timeout=120) as client:  # two at once: the restarted worker takes one
        requests = [client.send("reconstruct", CHEAP, {"image": astronaut_png}) for _ in range(2)]
        assert all(client.receive(60).ok for _ in requests)
    assert workers(two_workers.address)[busy["index"]]["served"] == restarted["served"] + 1
    assert "worker %d (pid %d) exited with code -9" % (busy["index"], busy["pid"]) in Path(two_workers.log_path).read_text()


@needs_blender
def test_a_batch_gets_every_photo_although_a_worker_dies_under_it(two_workers, astronaut_png, grace_hopper_jpg,
                                                                   tmp_path):
    """The headless batch (Debian's Blender) against ``serve --workers 2``: the photo whose worker is
    killed comes back as ``worker_lost``, is sent again once, and the run ends with every photo done."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, photo in enumerate([astronaut_png, grace_hopper_jpg] * 2):
        (folder / f"photo{index}.{'png' if index % 2 == 0 else 'jpg'}").write_bytes(photo)
    restarts = sum(w["restarts"] for w in workers(two_workers.address))
    batch = subprocess.Popen(blender_command("--input", str(folder), "--output", str(tmp_path / "out"), "--server",
                                             two_workers.address, "--formats", "glb", "--jobs", "2"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(w["state"] == "busy" for w in workers(two_workers.address)), 60)
        busy = next(w for w in workers(two_workers.address) if w["state"] == "busy")
        os.kill(busy["pid"], signal.SIGKILL)
        assert batch.wait(timeout=180) == 0
    finally:
        batch.kill()
    summary = load_summary(tmp_path / "out")
    assert summary["counts"]["ok"] == 4 and summary["counts"]["failed"] == 0
    assert sum(w["restarts"] for w in workers(two_workers.address)) == restarts + 1


def test_workers_die_with_a_killed_server(two_workers):
    pids = [w["pid"] for w in workers(two_workers.address)]
    os.kill(two_workers.pid, signal.SIGKILL)
    assert wait_for(lambda: not any(alive(pid) for pid in pids), 10)


def test_remote_clients_see_the_worker_count_but_no_process_ids():
    with running(StagedPipeline(0.0), ServerConfig(bind=LOCAL)) as server:
        local, remote = server.info(), server.info(remote=True)
    assert local["worker_count"] == remote["worker_count"] == 1 and local["workers"][0]["kind"] == "thread"
    assert set(remote) <= set(REMOTE_INFO_KEYS) and "workers" not in remote


def test_time_limit_and_deadlines_reach_worker_processes():
    config = ServerConfig(bind=LOCAL, workers=2, limits=RequestLimits(request_seconds=0.3))
    with running(functools.partial(StagedPipeline, 0.2), config) as server:
        with Client(server.address, timeout=30) as client:
            with pytest.raises(ProtocolError) as info:
                client.reconstruct(b"slow")
            assert info.value.code == ErrorCode.TOO_LARGE and "limit of 0.3 s per request" in info.value.message
            busy = [client.send("reconstruct", {}, {"image": b"busy"}) for _ in range(2)]  # both workers
            impatient = client.send("reconstruct", {}, {"image": b"impatient"}, timeout=0.3)
            replies = {reply.id: reply for reply in (client.receive(10) for _ in range(3))}
        processes = [worker.process for worker in server._pool.workers]
    assert "deadline has passed" in replies[impatient].error.message
    assert all(replies[request].error.code == ErrorCode.TOO_LARGE for request in busy)
    assert all(process.exitcode == 0 for process in processes)  # stopped cleanly with the server

