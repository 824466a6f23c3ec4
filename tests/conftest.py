"""Shared fixtures: real photos, bad inputs, and a real inference server on a free port."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addon.server_process import LocalServer, free_address

REPO = Path(__file__).resolve().parents[1]


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


def start_server(log_path: Path, *extra_args: str) -> LocalServer:
    """`python -m inference_server serve` as a real subprocess on a free port, models loaded."""
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), log_path=str(log_path), device="cpu",
                         extra_args=extra_args)
    server.start(timeout=180)
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server_address(server) -> str:
    return server.address


@pytest.fixture(scope="session")
def limited_server(tmp_path_factory):
    """A server with tight operator limits (tests/fuzz_messages.py FUZZ_SERVER_ARGS): 2 MB messages,
    4 MP photos, texture_size <= 1024, 16 MB replies, a queue of 8."""
    from .fuzz_messages import FUZZ_SERVER_ARGS

    server = start_server(tmp_path_factory.mktemp("limited") / "server.log", *FUZZ_SERVER_ARGS)
    try:
        yield server
    finally:
        server.stop()
