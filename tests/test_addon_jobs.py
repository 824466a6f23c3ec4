"""Worker threads, futures and the session's request life cycle against a real server (no bpy)."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from addon.server import jobs, session
from addon.server.process import free_port
from addon.wire import protocol
from addon.wire.protocol import ErrorCode, ProtocolError


def _wait(job, timeout=60.0):
    concurrent.futures.wait([job.future], timeout)
    assert job.done(), f"job still running after {timeout} s ({job.status})"
    return job


def test_worker_runs_jobs_on_its_own_thread_with_its_own_client(server_address):
    worker = jobs.Worker("test")
    try:
        seen = {}

        def probe(job):
            seen["thread"] = threading.current_thread().name
            seen["client"] = job.client
            return job.client.info(timeout=5)

        first = _wait(worker.submit(probe, address=server_address))
        second = _wait(worker.submit(probe, address=server_address))
        assert first.future.result()["protocol_version"] == protocol.VERSION
        assert seen["thread"] == "faceforge-test" != threading.current_thread().name
        assert second.future.result()["server_version"]
        assert first.client is None  # released after the job; the worker keeps it for the next one
        assert first.progress == 1.0 and first.elapsed >= 0
    finally:
        worker.shutdown()


def test_worker_survives_failing_jobs():
    worker = jobs.Worker("test")
    try:
        failing = _wait(worker.submit(lambda job: 1 / 0))
        with pytest.raises(ZeroDivisionError):
            failing.future.result()
        assert _wait(worker.submit(lambda job: "still alive")).future.result() == "still alive"
    finally:
        worker.shutdown()


def test_queued_job_cancelled_before_it_starts():
    worker = jobs.Worker("test")
    gate = threading.Event()
    try:
        blocker = worker.submit(lambda job: gate.wait(10))
        queued = worker.submit(lambda job: "never")
        queued.cancel()
        gate.set()
        _wait(blocker)
        assert queued.future.cancelled()
        assert jobs.user_message(concurrent.futures.CancelledError()) == "Reconstruction cancelled"
    finally:
        worker.shutdown()


def test_unreachable_server_is_reported_not_raised():
    address = f"tcp://127.0.0.1:{free_port()}"
    state = session.Session()
    try:
        request = state.submit_reconstruction(lambda: b"unused", photo_label="p.png", options={},
                                              settings=None, location=(0, 0, 0), address=address, timeout=5)
        error = _wait(request.job).future.exception()
        assert isinstance(error, ProtocolError) and error.code == ErrorCode.UNREACHABLE
        message = jobs.user_message(error, address=address)
        assert address in message and "Start Server" in message
    finally:
        state.close()


def test_reconstruction_round_trip_and_progress(server_address, astronaut_png):
    state = session.Session()
    try:
        request = state.submit_reconstruction(lambda: astronaut_png, photo_label="astronaut.png",
                                              options={"face": "largest", "resolution": 40}, settings=None,
                                              location=(1, 2, 3), address=server_address, timeout=120)
        assert state.busy and 0.0 <= request.job.progress < 1.0
        info, reconstruction = _wait(request.job, 180).future.result()
        assert not state.busy
        assert info["protocol_version"] == protocol.VERSION
        assert request.job.fraction > 0.5  # the server's own progress reports reached the per-face stages
        assert len(reconstruction.faces) == 1
        assert reconstruction.faces[0].arrays["vertices"].shape[1] == 3
        assert reconstruction.meta["config"]["resolution"] == 40
    finally:
        state.close()


def test_cancel_abandons_a_running_request_quickly(server_address, grace_hopper_jpg):
    state = session.Session()
    try:
        request = state.submit_reconstruction(lambda: grace_hopper_jpg, photo_label="g.jpg",
                                              options={"resolution": 300}, settings=None, location=(0, 0, 0),
                                              address=server_address, timeout=120)
        deadline = time.monotonic() + 30
        while request.job.fraction == 0.0 and time.monotonic() < deadline:  # the server reports its first stage
            time.sleep(0.01)
        cancelled_at = time.monotonic()
        state.cancel_request()
        error = _wait(request.job, 5).future.exception()
        assert time.monotonic() - cancelled_at < 1.0
        assert isinstance(error, ProtocolError) and error.code == ErrorCode.CANCELLED
        assert jobs.user_message(error) == "Reconstruction cancelled"
        # The worker and its client carry on: the abandoned reply does not confuse the next request.
        probe = state.requests.submit(lambda job: job.client.info(timeout=30), address=server_address)
        assert _wait(probe).future.result()["protocol_version"] == protocol.VERSION
    finally:
        state.close()


def test_timeout_is_reported(server_address, grace_hopper_jpg):
    state = session.Session()
    try:
        request = state.submit_reconstruction(lambda: grace_hopper_jpg, photo_label="g.jpg", options={},
                                              settings=None, location=(0, 0, 0), address=server_address,
                                              timeout=0.05)
        error = _wait(request.job, 30).future.exception()
        assert isinstance(error, ProtocolError) and error.code == ErrorCode.TIMEOUT
        assert "timeout" in jobs.user_message(error)
    finally:
        state.close()


@pytest.mark.parametrize("photo_fixture, code, words", [
    ("no_face_png", ErrorCode.NO_FACE, "No face found in coffee.png"),
    ("corrupt_bytes", ErrorCode.BAD_IMAGE, "The photo cannot be used"),
])
def test_server_errors_become_clear_messages(request, server_address, photo_fixture, code, words):
    data = request.getfixturevalue(photo_fixture)
    state = session.Session()
    try:
        job = state.submit_reconstruction(lambda: data, photo_label="coffee.png", options={},
                                          settings=None, location=(0, 0, 0), address=server_address,
                                          timeout=120).job
        error = _wait(job, 120).future.exception()
        assert isinstance(error, ProtocolError) and error.code == code
        assert words in jobs.user_message(error, photo="coffee.png")
    finally:
        state.close()


def test_missing_photo_file_is_reported(tmp_path):
    state = session.Session()
    try:
        missing = str(tmp_path / "gone.jpg")
        job = state.submit_reconstruction(missing, photo_label=missing, options={}, settings=None,
                                          location=(0, 0, 0), address="tcp://127.0.0.1:1", timeout=1).job
        error = _wait(job).future.exception()
        assert isinstance(error, FileNotFoundError)
        assert jobs.user_message(error, photo=missing) == f"Cannot read {missing}: No such file or directory"
    finally:
        state.close()


def test_status_polling(server_address):
    state = session.Session()
    try:
        assert state.status_line() == "Not connected"
        changed, deadline = False, time.monotonic() + 30
        while not changed and time.monotonic() < deadline:
            changed = state.poll_status(server_address)
            time.sleep(0.02)
        assert state.status is not None and state.status_error == ""
        line = state.status_line()
        assert line.startswith("Connected: server ") and f"protocol {protocol.VERSION}" in line and line.endswith("CPU")
        assert not state.poll_status(server_address)  # within STATUS_INTERVAL: no new probe
        assert state.status_job is None
    finally:
        state.close()


def test_device_label():
    assert session.device_label({"device": "cpu"}) == "CPU"
    assert session.device_label({"device": "cuda:0", "device_name": "NVIDIA H100"}) == "CUDA (NVIDIA H100)"


def test_protocol_mismatch_is_reported():
    """A server from the future (protocol version 2): a stub ROUTER answering every request in v2 framing."""
    import json

    import zmq

    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer():
        while not stop.is_set():
            if router.poll(50):
                identity, header, *_ = router.recv_multipart()
                request_id = json.loads(header)["id"]
                reply = {"protocol": "faceforge", "version": protocol.VERSION + 1, "id": request_id, "ok": True, "result": {}, "frames": []}
                router.send_multipart([identity, json.dumps(reply).encode()])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    state = session.Session()
    try:
        job = state.submit_reconstruction(lambda: b"photo", photo_label="p.png", options={}, settings=None,
                                          location=(0, 0, 0), address=f"tcp://127.0.0.1:{port}", timeout=10).job
        error = _wait(job, 30).future.exception()
        assert isinstance(error, ProtocolError) and error.code == ErrorCode.UNSUPPORTED_VERSION
        assert jobs.user_message(error).startswith("Server and add-on speak different protocol versions")
    finally:
        state.close()
        stop.set()
        thread.join(2)
        router.close(linger=0)


def test_a_lost_worker_asks_for_another_try():
    message = jobs.user_message(ProtocolError(ErrorCode.WORKER_LOST, "worker 1 (pid 7) exited"))
    assert "restarted" in message and "Reconstruct Face again" in message
