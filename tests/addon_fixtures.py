"""Fixtures of the add-on tests (on top of tests/conftest.py): a real reply, bpy, the built zip (photo
files: tests/photo_fixtures.py).

Imported by name into the test modules that use them; each module-scoped fixture belongs to one module.
"""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

from addon.wire.client import Client

_SPEC = importlib.util.spec_from_file_location(
    "build_extension", Path(__file__).resolve().parents[1] / "scripts" / "build_extension.py")
build_extension = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(build_extension)


def rgb_pixels(texture: np.ndarray) -> np.ndarray:
    """A photo as Blender image pixels (what tests paint images with): (H, W, 3) uint8, row 0 at the
    top -> flat float32 RGBA, row 0 at the bottom (Blender's order)."""
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
        raise ValueError(f"texture must be (H, W, 3) uint8, got {texture.shape} {texture.dtype}")
    height, width = texture.shape[:2]
    rgba = np.empty((height, width, 4), dtype=np.float32)
    np.multiply(texture[::-1], np.float32(1 / 255), out=rgba[..., :3], casting="unsafe")
    rgba[..., 3] = 1.0
    return rgba.ravel()


def built_zip(builder, output: Path) -> Path:
    """``builder(output=...)`` from the wheel cache, else downloading the wheels, else skip the test."""
    try:
        return builder(output=output, offline=True)
    except SystemExit:  # a wheel is not cached yet: try downloading it
        try:
            return builder(output=output)
        except (SystemExit, subprocess.CalledProcessError) as exc:
            pytest.skip(f"pyzmq wheels neither cached in build/wheels nor downloadable: {exc}")


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
