"""The built extension zip: contents, Blender's own manifest validation, and a real install + reconstruction.

The install runs in a child process with BLENDER_USER_RESOURCES pointing at a temporary folder, so
the user's Blender configuration is never touched and the add-on is loaded exactly as users get it.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.addon_fixtures import build_extension, built_zip
from tests.photo_fixtures import photo_folder  # noqa: F401 (fixture)

INSTALL_AND_RUN = r"""
import json, os, sys
import bpy, addon_utils

zip_path, address, photo = sys.argv[1:4]
out = {"install": sorted(bpy.ops.extensions.package_install_files(
    filepath=zip_path, repo="user_default", enable_on_install=True))}
name = "bl_ext.user_default.faceforge"
out["enabled"] = name in bpy.context.preferences.addons
out["module_file"] = sys.modules[name].__file__
out["label"] = bpy.ops.faceforge.reconstruct.get_rna_type().name
out["panel_category"] = bpy.types.FACEFORGE_PT_main.bl_category
out["bundled_zmq"] = os.path.isdir(os.path.join(bpy.utils.user_resource("EXTENSIONS", path=".local"),
                                                 "lib", "python3.11", "site-packages", "zmq"))
prefs = bpy.context.preferences.addons[name].preferences
prefs.server_address = address
bpy.context.scene.faceforge.photo_path = photo
bpy.context.scene.cursor.location = (0.0, 0.0, 1.6)
out["result"] = sorted(bpy.ops.faceforge.reconstruct())
obj = bpy.data.objects["astronaut"]
out["vertices"] = len(obj.data.vertices)
out["location"] = list(obj.location)
out["modifiers"] = [m.type for m in obj.modifiers]
out["packed"] = sorted(i.name for i in bpy.data.images if i.packed_file is not None)
addon_utils.disable(name, default_set=True)
out["disabled"] = name not in bpy.context.preferences.addons and not hasattr(bpy.types.Scene, "faceforge")
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory) -> Path:
    return built_zip(build_extension.build, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def legacy_zip(tmp_path_factory) -> Path:
    return built_zip(build_extension.build_legacy, tmp_path_factory.mktemp("dist-legacy"))


def test_zip_holds_the_addon_and_declared_wheels_only(extension_zip):
    with zipfile.ZipFile(extension_zip) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert names[0] == "blender_manifest.toml"  # at the root, beside the add-on's files
    assert "__init__.py" in names and "wire/protocol.py" in names and "scene/faces.py" in names
    assert not [n for n in names if "inference_server" in n or "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("tests/", "scripts/"))]
    wheels = sorted(n for n in names if n.endswith(".whl") and not n.startswith("server_wheel/"))
    assert wheels == sorted(w.removeprefix("./") for w in manifest["wheels"])
    # the server Install Server puts in its own environment: this checkout's, at the add-on's version
    assert [n for n in names if n.startswith("server_wheel/")] == [f"server_wheel/faceforge-{manifest['version']}-py3-none-any.whl"]
    platforms = " ".join(wheels)
    assert "manylinux" in platforms and "win_amd64" in platforms and "macosx" in platforms
    assert all("-cp311-" in w for w in wheels)
    assert set(manifest["permissions"]) == {"network", "files"}
    assert manifest["schema_version"] == "1.0.0" and manifest["blender_version_min"] == "4.2.0"


def test_blender_validates_the_zip(extension_zip):
    spec = importlib.util.find_spec("bpy")
    if spec is None:
        pytest.skip("bpy is not installed")
    cli = next(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    result = subprocess.run([sys.executable, str(cli), "validate", str(extension_zip)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_legacy_zip_is_the_same_package_with_bl_info(legacy_zip, extension_zip):
    manifest = build_extension.load_manifest()
    with zipfile.ZipFile(legacy_zip) as legacy, zipfile.ZipFile(extension_zip) as extension:
        names = legacy.namelist()
        init = legacy.read("faceforge/__init__.py").decode()
        code = {n.removeprefix("faceforge/") for n in names if n.endswith(".py") and "/_pyzmq/" not in n}
        assert code == {n for n in extension.namelist() if n.endswith(".py")}  # the same modules
    assert all(n.startswith("faceforge/") for n in names) and "faceforge/blender_manifest.toml" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    info = next(ast.literal_eval(node.value) for node in ast.parse(init).body
                if isinstance(node, ast.Assign) and node.targets[0].id == "bl_info")
    assert info["version"] == tuple(int(p) for p in manifest["version"].split(".")) and info["blender"] == (3, 6, 0)
    assert info["name"] == manifest["name"]
    bundles = {n.split("/")[2] for n in names if n.startswith("faceforge/_pyzmq/")}
    assert bundles == {f"{python}-{platform}" for python in ("cp310", "cp311")
                       for platform in ("linux_x86_64", "win_amd64", "macos")}


BUNDLED_IMPORT = """
import sys
sys.path.insert(0, sys.argv[1])
from faceforge.server import pyzmq_bundle
try:
    pyzmq_bundle.ensure_pyzmq()
except ImportError as exc:
    print("IMPORT-ERROR", exc)
    raise SystemExit(0)
import zmq
with zmq.Context() as context, context.socket(zmq.PAIR) as a, context.socket(zmq.PAIR) as b:
    a.bind("inproc://x"); b.connect("inproc://x"); a.send(b"ping")
    print("ZMQ", zmq.__file__, b.recv().decode())
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)),
                    reason="the bundle for this interpreter is cp311-linux_x86_64")
def test_legacy_zip_brings_pyzmq_when_python_has_none(legacy_zip, tmp_path):
    with zipfile.ZipFile(legacy_zip) as archive:
        archive.extractall(tmp_path)
    run = [sys.executable, "-S", "-c", BUNDLED_IMPORT, str(tmp_path)]  # -S: no site-packages, so no pyzmq
    result = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"ZMQ {tmp_path}/faceforge/_pyzmq/cp311-linux_x86_64/zmq/" in result.stdout and "ping" in result.stdout
    shutil.rmtree(tmp_path / "faceforge" / "_pyzmq" / "cp311-linux_x86_64")
    result = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert "IMPORT-ERROR FaceForge needs pyzmq" in result.stdout and "cp310-linux_x86_64" in result.stdout


def test_wheel_request_parsing():
    assert build_extension.wheel_request("pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl") \
        == ("pyzmq", "27.3.0", "manylinux_2_26_x86_64")
    with pytest.raises(ValueError):
        build_extension.wheel_request("pyzmq-27.3.0-1-cp311-cp311-win_amd64.whl")


REPO = Path(__file__).resolve().parents[1]
# The oldest Blender the manifest admits: `./run test` keeps bpy 4.2 LTS in its own small venv.
BPY42_PYTHON = REPO / ".venv-bpy42" / "bin" / "python"


@pytest.mark.parametrize("blender", ["bpy-5.0 (this venv)", "bpy-4.2-lts"])
def test_installed_extension_reconstructs(blender, extension_zip, server_address, photo_folder, tmp_path):
    if blender == "bpy-4.2-lts":
        if not BPY42_PYTHON.exists():
            pytest.skip(f"no bpy 4.2 interpreter at {BPY42_PYTHON} (created by ./run test)")
        python = str(BPY42_PYTHON)
    else:
        pytest.importorskip("bpy")
        python = sys.executable
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender"))
    env.pop("PYTHONPATH", None)  # the add-on must load from the installed extension, not this checkout
    result = subprocess.run([python, "-c", INSTALL_AND_RUN, str(extension_zip), server_address,
                             str(photo_folder / "astronaut.png")], capture_output=True, text=True, timeout=600,
                            cwd=str(tmp_path), env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["install"] == ["FINISHED"] and out["enabled"]
    assert out["module_file"].startswith(str(tmp_path / "blender" / "extensions" / "user_default" / "faceforge"))
    assert out["label"] == "Reconstruct Face" and out["panel_category"] == "FaceForge"
    assert out["bundled_zmq"]  # Blender unpacked the bundled pyzmq wheel
    assert out["result"] == ["FINISHED"]
    assert out["vertices"] > 1000 and out["location"] == [0.0, 0.0, pytest.approx(1.6)]
    assert out["modifiers"] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    assert out["packed"] == ["astronaut_depth", "astronaut_detail", "astronaut_texture"]
    assert out["disabled"]
