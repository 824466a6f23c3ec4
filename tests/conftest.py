"""Shared fixtures: real photos, bad inputs, and a real inference server on a free port."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from addon.wire.client import Client  # noqa: E402
from addon.wire.protocol import ProtocolError  # noqa: E402


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def grace_hopper_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def astronaut_rgb() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_png(astronaut_rgb) -> bytes:
    return _png(astronaut_rgb)


@pytest.fixture(scope="session")
def grace_hopper_jpg() -> bytes:
    return grace_hopper_path().read_bytes()


@pytest.fixture(scope="session")
def no_face_png() -> bytes:
    """A real photo without a face: skimage's coffee cup."""
    from skimage import data

    return _png(data.coffee())


@pytest.fixture(scope="session")
def corrupt_bytes(grace_hopper_jpg) -> bytes:
    """A JPEG cut off after its first kilobyte, then garbage: a classic broken upload."""
    return grace_hopper_jpg[:1024] + bytes(range(256)) * 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m inference_server serve` as a real subprocess, stopped with SIGTERM."""

    def __init__(self, address: str, log_path: Path, *extra: str):
        self.address = address
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "inference_server", "serve", "--bind", address,
                                         "--device", "cpu", *extra], cwd=REPO, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
                try:
                    return client.info(timeout=2)
                except ProtocolError:
                    time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    proc = ServerProcess(f"tcp://127.0.0.1:{free_port()}", tmp_path_factory.mktemp("server") / "server.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def server_address(server) -> str:
    return server.address
