"""Fixtures of the add-on tests (on top of tests/conftest.py): a real reply, bpy, the built zip (photo
files: tests/photo_fixtures.py).

Imported by name into the test modules that use them; each module-scoped fixture belongs to one module.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from addon.wire.client import Client

DRIVER = Path(__file__).resolve().parent / "window_driver.py"
WINDOW = (1280, 800)  # Blender's window on the virtual X server (tests/window_driver.py)
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


def xvfb(log: Path) -> tuple[subprocess.Popen, str]:
    """A virtual X server on a free display; returns (process, ":N")."""
    for number in range(90, 190):
        if Path(f"/tmp/.X{number}-lock").exists() or Path(f"/tmp/.X11-unix/X{number}").exists():
            continue
        process = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", f"{WINDOW[0]}x{WINDOW[1]}x24",
                                    "-nolisten", "tcp"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if Path(f"/tmp/.X11-unix/X{number}").exists():
                return process, f":{number}"
            time.sleep(0.1)
        process.kill()  # taken meanwhile, or too slow: the next number
        process.wait()
    pytest.fail(f"Xvfb did not start: {log.read_text()[-2000:]}")


def run_window_driver(config: dict, out: Path, environ: dict | None = None, timeout: float = 560) -> tuple:
    """tests/window_driver.py in Debian's Blender on a virtual X server: (its result.json, Blender's stderr).
    ``environ``: the whole environment (default: this one without PYTHONPATH, so the add-on comes from its zip)."""
    missing = [tool for tool in ("blender", "Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (./run test installs Debian's blender, xvfb and xdotool)")
    (out / "config.json").write_text(json.dumps(config))
    xvfb_process, display = xvfb(out / "xvfb.log")
    env = dict(environ) if environ is not None else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DISPLAY=display, LIBGL_ALWAYS_SOFTWARE="1", TMPDIR=str(out), BLENDER_USER_SCRIPTS=str(out / "scripts"),
               BLENDER_USER_CONFIG=str(out / "config"))
    try:
        with (out / "blender.out").open("wb") as stdout, (out / "blender.err").open("wb") as stderr:
            subprocess.run(["blender", "--factory-startup", "-p", "0", "0", str(WINDOW[0]), str(WINDOW[1]),
                            "--python", str(DRIVER), "--", str(out / "config.json")],
                           env=env, stdout=stdout, stderr=stderr, timeout=timeout, cwd=str(out))
    finally:
        xvfb_process.terminate()  # SIGTERM: Xvfb removes its lock file
        xvfb_process.wait()
    stderr = (out / "blender.err").read_text(errors="replace")
    assert (out / "result.json").exists(), f"the driver wrote no result; Blender's stderr:\n{stderr[-3000:]}"
    result = json.loads((out / "result.json").read_text())
    assert not result["errors"], result["errors"][0]
    return result, stderr


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
