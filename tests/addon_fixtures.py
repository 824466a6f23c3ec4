"""Fixtures of the add-on tests (on top of tests/conftest.py): photo files, a real reply, bpy, the built zip.

Imported by name into the test modules that use them; each module-scoped fixture belongs to one module.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addon.wire.client import Client


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, astronaut_png, grace_hopper_jpg, no_face_png, corrupt_bytes) -> Path:
    """The shared photos as files, named as a user would have them, plus a two-face group photo."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "astronaut.png").write_bytes(astronaut_png)
    (folder / "grace_hopper.jpg").write_bytes(grace_hopper_jpg)
    (folder / "coffee.png").write_bytes(no_face_png)
    (folder / "broken.jpg").write_bytes(corrupt_bytes)
    left = Image.open(io.BytesIO(astronaut_png)).convert("RGB")
    right = Image.open(io.BytesIO(grace_hopper_jpg)).convert("RGB").resize((left.height * 512 // 600, left.height))
    group = Image.new("RGB", (left.width + right.width, left.height))
    group.paste(left, (0, 0))
    group.paste(right, (left.width, 0))
    group.save(folder / "pair.png")
    return folder


@pytest.fixture(scope="session")
def astronaut_reply(server_address, astronaut_png):
    """(info, Reconstruction) of the astronaut from the real server."""
    with Client(server_address, timeout=180) as client:
        return client.info(), client.reconstruct(astronaut_png, {"face": "largest"})


@pytest.fixture(scope="session")
def bpy_module():
    return pytest.importorskip("bpy")


def pixels_of(image) -> np.ndarray:
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, 4)
