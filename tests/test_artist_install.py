"""An artist's install, as a new user does it: the extension zip into a fresh Blender, then only Blender's buttons.

A fresh HOME (so a fresh FaceForge data folder) and a fresh Blender user folder; no FACEFORGE_*
variables, no checkout on the add-on's path. Install Server makes its own environment from a wheel
folder that ``scripts/server_bundle.py`` prepares once and keeps between runs (CI does not fetch torch
every time); Download Head Model takes the archive from a local HTTP server standing in for GitHub.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from addon.server import environment, installer
from addon.server.jobs import Job
from addon.server.process import free_address
from tests import ict_fixtures as ict
from tests.addon_fixtures import build_extension, built_zip, run_window_driver
from tests.conftest import REPO
from tests.photo_fixtures import photo_folder  # noqa: F401 (fixture)

BUNDLE = Path(os.environ.get("FACEFORGE_TEST_CACHE", Path.home() / ".cache" / "faceforge-tests")) / "server-bundle"

ARTIST = r"""
import json, os, sys, threading, time
import bpy

zip_path, bundle, model_url, address, photo = sys.argv[-5:]
out = {}
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
name = "bl_ext.user_default.faceforge"
operators = sys.modules[name + ".ui.operators"]
prefs = bpy.context.preferences.addons[name].preferences
prefs.wheel_folder, prefs.model_source, prefs.server_address = bundle, model_url, address
out["home"] = sys.modules[name + ".server.process"].find_home()

seen = []
def watch(stop):  # what the panel would show, sampled while the operator runs
    while not stop.is_set():
        job = operators.SESSION.setup
        if job is not None and not job.done():
            seen.append((job.status, job.fraction, job.cancelled))
            if out.get("cancel_at") is None and job.status.startswith("Installing packages (1"):
                out["cancel_at"] = job.status
                job.cancel_event.set()  # the Cancel button
        time.sleep(0.1)
stop = threading.Event()
threading.Thread(target=watch, args=(stop,), daemon=True).start()

out["cancelled"] = sorted(bpy.ops.faceforge.server_install())
out["cancel_message"] = operators.SESSION.message
out["installed_after_cancel"] = os.path.exists(os.path.join(os.environ["HOME"], ".local/share/FaceForge/server-python/faceforge-install.json"))
out["install"] = sorted(bpy.ops.faceforge.server_install())
out["install_message"] = operators.SESSION.message
stop.set()
out["seen"] = seen
out["start"] = sorted(bpy.ops.faceforge.server_start())
out["start_message"] = operators.SESSION.message
out["python"] = operators.SESSION.server.python
client = sys.modules[name + ".wire.client"].Client(address, timeout=30)
out["geometries_before"] = client.info()["geometries"]
out["fetch"] = sorted(bpy.ops.faceforge.model_fetch())
out["fetch_message"] = operators.SESSION.message
out["geometries_after"] = client.info()["geometries"]
client.close()
props = bpy.context.scene.faceforge
props.photo_path, props.geometry = photo, "HEAD"
out["reconstruct"] = sorted(bpy.ops.faceforge.reconstruct())
out["reconstruct_message"] = operators.SESSION.message
heads = [o for o in bpy.data.objects if o.data is not None and getattr(o.data, "shape_keys", None)]
out["shape_keys"] = max((len(o.data.shape_keys.key_blocks) for o in heads), default=0)
operators.SESSION.stop_server()
import subprocess  # the same environment from a terminal: pip install of the wheel gave the faceforge command
command = os.path.join(os.path.dirname(out["python"]), "faceforge")
cli = subprocess.run([command, "reconstruct", photo, "-o", "cli.glb"], capture_output=True, text=True, timeout=600)
out["cli"] = [cli.returncode, cli.stderr[-800:], os.path.getsize("cli.glb") if os.path.exists("cli.glb") else 0]
out["remove"] = sorted(bpy.ops.faceforge.server_delete())
out["remove_message"] = operators.SESSION.message
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def wheel_folder() -> Path:
    """The offline bundle, made by the documented command (only what is missing is fetched again)."""
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "server_bundle.py"), str(BUNDLE), "--torch-index",
                          "none"], capture_output=True, text=True, timeout=1800, env=dict(os.environ, PIP_FIND_LINKS=""))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return BUNDLE


@pytest.fixture(scope="module")
def model_archive(tmp_path_factory):
    shared = ict.require_ict()
    folder = tmp_path_factory.mktemp("github")
    from inference_server.head import store

    ict.write_repository_zip(folder / "ict.zip", ict.upstream_obj_texts(shared), store.PINNED_COMMIT)
    server = ict.ArchiveServer(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"{server.base}/ict.zip"
    server.shutdown()
    server.server_close()


def test_install_server_start_download_model_reconstruct_remove(wheel_folder, model_archive, tmp_path,
                                                                 tmp_path_factory, photo_folder):
    extension = built_zip(build_extension.build, tmp_path_factory.mktemp("dist"))
    home = tmp_path / "home"
    env = _new_user(home, BLENDER_USER_RESOURCES=str(tmp_path / "blender"))
    photo = str(photo_folder / "astronaut.png")
    run = subprocess.run([sys.executable, "-c", ARTIST, str(extension), str(wheel_folder), model_archive,
                          free_address(), photo], capture_output=True, text=True, timeout=1500, env=env,
                         cwd=str(tmp_path))
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    print({key: value for key, value in out.items() if key != "seen"})

    assert out["home"] == ""  # the add-on runs from Blender's extension folder, not from a checkout
    assert out["cancelled"] == ["CANCELLED"] and out["cancel_message"][0] == "WARNING"
    assert "press the button again" in out["cancel_message"][1] and not out["installed_after_cancel"]
    assert out["install"] == ["FINISHED"], out["install_message"]
    assert "installed" in out["install_message"][1] and "Start Server" in out["install_message"][1]
    statuses = [status for status, _fraction, _cancelled in out["seen"]]
    fractions = [fraction for _status, fraction, cancelled in out["seen"] if not cancelled]
    assert any(s.startswith("Creating the Python environment (Python 3.11)") for s in statuses)
    assert any(s.startswith("Collecting torch") for s in statuses)
    assert any(s.startswith("Installing packages (") for s in statuses)
    assert any(s == "Checking the server starts" for s in statuses)
    assert len(set(fractions)) > 20 and max(fractions) >= 0.9

    environment_python = home / ".local" / "share" / "FaceForge" / "server-python" / "bin" / "python"
    assert out["start"] == ["FINISHED"] and out["python"] == str(environment_python)
    assert out["geometries_before"] == ["face"]  # no head model yet: face mode only
    assert out["fetch"] == ["FINISHED"], out["fetch_message"]
    assert out["geometries_after"] == ["head", "face"]  # the server restarted with the model
    assert (home / ".local" / "share" / "FaceForge" / "models" / "ict-facekit.npz").is_file()
    assert out["reconstruct"] == ["FINISHED"], out["reconstruct_message"]
    assert out["shape_keys"] == 54  # Basis + 53 ARKit expressions
    code, stderr, size = out["cli"]
    assert code == 0 and size > 1_000_000, stderr  # a head with its 53 morph targets and texture
    assert out["remove"] == ["FINISHED"] and not environment_python.exists()
    assert (home / ".local" / "share" / "FaceForge" / "models" / "ict-facekit.npz").is_file()  # the model stays


def _new_user(home: Path, **more) -> dict:
    """The environment of someone who never used FaceForge: an empty HOME, no FACEFORGE_* or pip settings (only the
    wheel folder: no machine-wide index or find-links), a plain PATH."""
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("FACEFORGE_", "PIP_", "XDG_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH="/usr/bin:/bin", PIP_CONFIG_FILE=os.devnull, **more)
    return env


def test_install_server_in_a_blender_window(wheel_folder, tmp_path):
    """Debian's Blender 3.4 with the legacy zip, in a real window: the sidebar offers Install Server, the progress
    shows in the sidebar and in the preferences, and the UI keeps answering while pip runs."""
    config = {"out": str(tmp_path), "scenario": "install", "timeout": 500,
              "zip": str(built_zip(build_extension.build_legacy, tmp_path / "dist")),
              "preferences": {"wheel_folder": str(wheel_folder), "server_address": free_address()}}
    result, _stderr = run_window_driver(config, tmp_path, _new_user(tmp_path / "home"), timeout=900)
    print(f"\nscreenshots in {tmp_path}; the UI's longest pause while installing: {result['max_gap']}")
    assert result["offered"]  # no server anywhere: the sidebar shows Install Server…
    level, message = result["install"]["message"]
    assert level == "INFO" and message.startswith("Server 0.1.0 installed"), message
    drawn = [" ".join(draw["texts"]) for draw in result["draws"]]  # a long line is wrapped into several labels
    assert any("Installing packages (" in text for text in drawn)  # the sidebar's progress line
    assert [Path(path).name for path in result["screenshots"]] == [
        "install_sidebar.png", "install_preferences.png", "installed_preferences.png"]
    assert all(Path(path).stat().st_size > 20_000 for path in result["screenshots"])
    assert result["max_gap"].get("install", 0) < 1.0  # pip runs in another process: Blender never waits on it
    assert (tmp_path / "home" / ".local" / "share" / "FaceForge" / "server-python" / "faceforge-install.json").exists()


def _job() -> Job:
    return Job(lambda job: None, "", "")


def test_the_data_folder_is_the_servers(tmp_path):
    import platformdirs

    assert environment.user_data_dir({"HOME": str(tmp_path)}, home=str(tmp_path)) == \
        Path(tmp_path) / ".local" / "share" / "FaceForge"
    assert environment.user_data_dir(os.environ) == Path(platformdirs.user_data_dir("FaceForge")) or \
        os.environ.get("FACEFORGE_DATA")
    assert environment.user_data_dir({"FACEFORGE_DATA": "/d"}) == Path("/d")
    assert environment.user_data_dir({"XDG_DATA_HOME": "/x"}, home="/h") == Path("/x/FaceForge")
    assert environment.user_data_dir({"LOCALAPPDATA": "C:/L"}, "win32", "C:/U") == Path("C:/L/FaceForge/FaceForge")
    assert environment.user_data_dir({}, "darwin", "/Users/a") == Path("/Users/a/Library/Application Support/FaceForge")


def test_base_python_is_found_or_what_to_install_is_said(tmp_path):
    found = environment.find_base_python(environ={"PATH": "/usr/bin:/bin"}, executable="")
    assert found.version in environment.SUPPORTED and Path(found.path).exists()
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\necho /usr/bin/python3.10; echo 3.10; echo 1\n")
    old.chmod(0o755)
    no_venv = tmp_path / "python3.11"
    no_venv.write_text("#!/bin/sh\necho /usr/bin/python3.11; echo 3.11; echo 0\n")
    no_venv.chmod(0o755)
    with pytest.raises(ValueError) as error:
        environment.find_base_python(environ={"PATH": str(tmp_path)}, executable="")
    message = str(error.value)
    assert "No Python 3.11-3.13 found" in message and "python.org" in message
    assert "is Python 3.10" in message and "apt install python3.11-venv" in message
    with pytest.raises(ValueError, match="Base Python in the preferences cannot be used"):
        environment.find_base_python(str(old))


def test_pip_sources_and_failures_in_words(tmp_path):
    cpu, cuda = installer.InstallSettings(), installer.InstallSettings(torch="cuda")
    assert installer.source_arguments(cpu, "linux") == ["--extra-index-url", installer.TORCH_INDEX + "cpu"]
    assert installer.source_arguments(cpu, "darwin") == [] and installer.source_arguments(cuda, "linux") == []
    assert installer.source_arguments(cuda, "win32") == ["--extra-index-url", installer.TORCH_INDEX + "cu128"]
    assert installer.source_arguments(installer.InstallSettings(wheel_folder="/w")) == \
        ["--no-index", "--find-links", "/w"]
    assert installer.source_arguments(installer.InstallSettings(index_url="https://m/simple")) == \
        ["--index-url", "https://m/simple"]
    log = tmp_path / "server-install.log"
    said = {text: installer.failure_message(text.splitlines(), 1, log, cpu) for text in (
        "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
        "WARNING: Retrying ... NewConnectionError('Failed to establish a new connection: [Errno -3] "
        "Temporary failure in name resolution')",
        "ProxyError('Cannot connect to proxy.', OSError('Tunnel connection failed: 407 Proxy Authentication'))",
        "ERROR: No matching distribution found for torch>=2.2",
        "something else\nERROR: it broke")}
    first, network, proxy, missing, other = said.values()
    assert first.startswith("The disk is full") and str(log) in first
    assert network.startswith("pip could not reach the package index") and "wheel folder" in network
    assert proxy.startswith("The proxy refused")
    assert missing.startswith("torch>=2.2 is not available from PyPI")
    assert other == f"pip failed (exit code 1): ERROR: it broke (log: {log})"


def test_progress_follows_pip(tmp_path):
    job = _job()
    site = tmp_path / "site"
    site.mkdir()
    progress = installer.PipProgress(job, ["faceforge", "torch", "numpy"], site, 0.1, 0.9)
    progress.line("Processing /w/faceforge-0.1.0-py3-none-any.whl")
    assert job.status == "Collecting faceforge (1 of 3)" and job.fraction == pytest.approx(0.1)
    progress.line("Collecting torch>=2.2 (from faceforge==0.1.0)")
    progress.line("Progress 300000000 of 600000000")
    assert job.status == "Downloading torch: 300 of 600 MB" and job.fraction == pytest.approx(0.1 + 0.8 * 0.3)
    progress.line("Installing collected packages: numpy, torch, faceforge")
    (site / "numpy-1.26.4.dist-info").mkdir()
    progress.tick()
    assert job.status == "Installing packages (1 of 3)" and job.fraction == pytest.approx(0.1 + 0.8 * (0.6 + 0.4 / 3))
    progress.line("Collecting x")  # never backwards
    assert job.fraction == pytest.approx(0.1 + 0.8 * (0.6 + 0.4 / 3))


def test_an_empty_wheel_folder_is_named_in_the_error(tmp_path):
    """The whole path up to pip's resolution, for real: a fresh environment, then a clear refusal."""
    empty = tmp_path / "wheels"
    empty.mkdir()
    job = _job()
    with pytest.raises(RuntimeError) as error:
        installer.install_server(job, installer.InstallSettings(wheel_folder=str(empty), base_python="/usr/bin/python3"),
                                 requirement="faceforge", environ={"FACEFORGE_DATA": str(tmp_path / "data")})
    assert str(error.value).startswith(f"faceforge is not available from the wheel folder {empty}")
    assert "No matching distribution found for faceforge" in error.value.tail  # pip's own last lines, for the panel
    assert environment.installed({"FACEFORGE_DATA": str(tmp_path / "data")}) is None
    assert (tmp_path / "data" / "server-python" / "bin" / "python").exists()  # kept: the next try goes on from it


def test_a_model_source_that_is_not_a_model_is_refused(tmp_path):
    bad = tmp_path / "notes.zip"
    bad.write_bytes(b"not a zip")
    job = _job()
    with pytest.raises(RuntimeError, match="The head model was not installed: .*notes.zip"):
        installer.download_model(job, sys.executable, str(bad), cwd=str(REPO))
