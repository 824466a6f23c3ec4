"""LocalServer: a real ``python -m inference_server serve`` subprocess started, probed and stopped."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from addon.server import environment
from addon.server import process as server_process
from addon.server.process import LocalServer, free_port
from addon.wire import protocol
from addon.wire.client import Client

REPO = Path(__file__).resolve().parents[1]


def test_start_answers_info_then_stop(tmp_path):
    log = tmp_path / "server.log"
    server = LocalServer(sys.executable, f"tcp://127.0.0.1:{free_port()}", cwd=str(REPO), log_path=str(log),
                         device="cpu")
    try:
        info = server.start(timeout=180)
        assert server.running and server.pid
        assert info["protocol_version"] == protocol.VERSION and info["device"] == "cpu"
        with Client(server.address, timeout=10) as client:
            assert client.info()["server_version"] == info["server_version"]
        assert "ready" in server.log_tail(50)
        assert server.start() == info  # already running: no second process
        with pytest.raises(RuntimeError, match="already in use"):
            LocalServer(sys.executable, server.address, cwd=str(REPO)).start(timeout=10)
        began = time.monotonic()
        server.request_stop()  # what the Stop button does: signal, never wait
        server.poll_stopped(grace=60)
        assert time.monotonic() - began < 0.5
        while not server.poll_stopped(grace=60):
            time.sleep(0.05)
        assert server.returncode == 0  # SIGTERM: a clean shutdown
    finally:
        server.stop()
    assert not server.running
    assert not server_process.tcp_in_use(server.address)
    server.stop()  # idempotent


def test_failed_start_raises_with_log_tail(tmp_path):
    # The venv's base interpreter: FaceForge is not installed there (the venv has it, editable).
    base_python = str(Path(sys.base_prefix) / "bin" / "python3")
    server = LocalServer(base_python, f"tcp://127.0.0.1:{free_port()}", cwd=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code 1") as info:
        server.start(timeout=60)
    assert "No module named inference_server" in str(info.value)  # the log tail explains why
    assert time.monotonic() - started < 30
    assert not server.running


def test_a_server_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    stubborn = tmp_path / "python"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 120\n")  # never answers, ignores SIGTERM
    stubborn.chmod(0o755)
    server = LocalServer(str(stubborn), f"tcp://127.0.0.1:{free_port()}", cwd=str(tmp_path))
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        server.start(timeout=1)  # then stops it: SIGTERM, ignored, SIGKILL after 5 s
    assert 5 <= time.monotonic() - began < 30
    assert server.returncode == -9 and not server.running


def test_missing_interpreter():
    with pytest.raises(RuntimeError, match="cannot run '/nonexistent/python'"):
        LocalServer("/nonexistent/python", f"tcp://127.0.0.1:{free_port()}").start(timeout=5)


def test_start_can_be_cancelled(tmp_path):
    server = LocalServer(sys.executable, f"tcp://127.0.0.1:{free_port()}", cwd=str(REPO), device="cpu")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(RuntimeError, match="cancelled"):
        server.start(timeout=120, cancel=cancel)
    assert not server.running


def test_server_python_precedence(tmp_path):
    """One order for the add-on, the batch and tests: explicit, $FACEFORGE_PYTHON, the environment Install
    Server made, the home's .venv, this Python if it imports torch; None when nothing fits (Blender's binary
    never does)."""
    home = tmp_path / "home"
    data = {"FACEFORGE_DATA": str(tmp_path / "data")}
    env = {"FACEFORGE_HOME": str(home), "FACEFORGE_PYTHON": "/e", **data}
    assert server_process.find_python("/opt/py", environ=env) == "/opt/py"
    assert server_process.find_python(None, environ=env) == "/e"
    bare = {"FACEFORGE_HOME": str(home), **data}
    assert server_process.find_python(environ=bare, executable="/usr/bin/python3", has_torch=lambda p: True) \
        == "/usr/bin/python3"
    assert server_process.find_python(environ=bare, executable="/usr/bin/python3", has_torch=lambda p: False) is None
    assert server_process.find_python(environ=bare, executable="/usr/bin/blender", has_torch=lambda p: True) is None
    venv = home / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    assert server_process.find_python(environ=bare, executable="/x") == str(venv / "python")
    assert server_process.find_python(environ=env) == "/e"
    installed = environment.environment_dir(bare)
    installed.mkdir(parents=True)
    record = environment.InstalledServer(sys.executable, "0.1.0", "2", "cpu", "PyPI", environment.stamp())
    record.write(installed)
    assert server_process.find_python(environ=bare, executable="/x") == sys.executable  # before the home's .venv
    assert server_process.find_python(environ=env) == "/e"
    environment.forget(bare)
    assert server_process.find_python(environ=bare, executable="/x") == str(venv / "python")
    assert server_process.find_home(bare) == str(home)
    assert server_process.can_import_torch(sys.executable) and not server_process.can_import_torch("/nonexistent/py")
    # From this source checkout: the repository root and its .venv.
    assert server_process.find_home({}) == str(REPO)
    if (REPO / ".venv" / "bin" / "python").exists():
        assert server_process.find_python(environ={}) == str(REPO / ".venv" / "bin" / "python")


def test_tcp_in_use():
    assert not server_process.tcp_in_use(f"tcp://127.0.0.1:{free_port()}")
    assert not server_process.tcp_in_use("ipc:///tmp/faceforge")


def test_free_address_is_a_loopback_tcp_address():
    address = server_process.free_address()
    assert address.startswith("tcp://127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
    assert not server_process.tcp_in_use(address)
