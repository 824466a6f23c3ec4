"""Shared fixtures: real photos, bad inputs, and a real inference server on a free port."""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addon.server.process import LocalServer, free_address

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


def pytest_configure(config):
    """Tests never see models installed on this machine: servers, batches and CLIs they start get an
    empty data folder ($FACEFORGE_DATA) unless a test gives them one (``head_data_dir``)."""
    os.environ["FACEFORGE_DATA"] = tempfile.mkdtemp(prefix="faceforge-test-data-")


def start_server(log_path: Path, *extra_args: str, data_dir: Path | None = None) -> LocalServer:
    """`python -m inference_server serve` as a real subprocess on a free port, models loaded;
    ``data_dir`` is its $FACEFORGE_DATA (installed models)."""
    server = LocalServer(sys.executable, free_address(), cwd=str(REPO), log_path=str(log_path), device="cpu",
                         extra_args=extra_args, environ={"FACEFORGE_DATA": str(data_dir)} if data_dir else None)
    server.start(timeout=180)
    return server


@pytest.fixture(scope="session")
def head_data_dir(tmp_path_factory) -> Path:
    """A $FACEFORGE_DATA with the ICT-FaceKit head model installed by the product's own installer."""
    from inference_server.head import store

    from .ict_fixtures import ICT_NPZ as source

    if not source.exists():
        pytest.skip(f"no ICT-FaceKit model at {source}")
    folder = tmp_path_factory.mktemp("faceforge-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEFORGE_DATA", str(folder))
        store.install(source, log=lambda line: None)
    return folder


@pytest.fixture(scope="session")
def head_server(tmp_path_factory, head_data_dir):
    server = start_server(tmp_path_factory.mktemp("head-server") / "server.log", data_dir=head_data_dir)
    try:
        yield server
    finally:
        server.stop()


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
