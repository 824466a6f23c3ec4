"""The project as an installable distribution: the wheel carries the data the server and the web page
read at run time, and the ``faceforge`` command runs the same parsers as ``python -m inference_server``."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .addon_fixtures import build_extension
from .conftest import REPO


def test_the_wheel_carries_the_package_data_and_the_faceforge_command(tmp_path):
    wheel = build_extension.server_wheel(tmp_path / "dist")  # what the add-on zip carries for Install Server
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        requires = next(archive.read(n).decode() for n in names if n.endswith("METADATA"))
    for data in ("inference_server/head/landmarks_ict.npz", "inference_server/web/static/index.html",
                 "inference_server/web/static/page.js", "inference_server/web/static/vendor/three/LICENSE",
                 "inference_server/web/static/vendor/three/build/three.core.js",
                 "inference_server/web/static/vendor/three/addons/loaders/GLTFLoader.js",
                 "addon/blender_manifest.toml" if (REPO / "addon/blender_manifest.toml").exists() else "addon/__init__.py"):
        assert data in names, data
    assert any(n.startswith("inference_server/cues/weights/") and n.endswith(".pt") for n in names)
    assert "faceforge = inference_server.__main__:console" in entry_points
    assert "Requires-Dist: aiohttp" in requires and "Requires-Dist: pyzmq" in requires


def test_the_faceforge_command_is_the_servers_command_line():
    command = Path(sys.executable).parent / "faceforge"  # put there by ./run's editable install
    assert command.exists(), "run ./run setup: the editable install makes the faceforge command"
    run = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("usage: faceforge")
    for verb in ("serve", "reconstruct", "video", "web", "model", "keys", "train"):
        assert verb in run.stdout
    run = subprocess.run([str(command), "reconstruct", "/nonexistent.jpg"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3 and "cannot read /nonexistent.jpg" in run.stderr
