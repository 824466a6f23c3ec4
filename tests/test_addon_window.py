"""The add-on in a real Blender window, used as a person would.

Debian's Blender 3.4 runs its GUI on a virtual X server (Xvfb, software OpenGL). The legacy add-on
zip is installed through Preferences > Add-ons > Install, the FaceForge tab is opened with the mouse
wheel, Start Server / Reconstruct Face / Stop Server run with INVOKE_DEFAULT over the 3D view, Esc
is a real key press. tests/window_driver.py does all that inside Blender and records what the panel
drew, how long a 100 ms UI timer was starved, screenshots and the built object; here we judge it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from addon.server.process import free_address
from tests.addon_fixtures import build_extension, built_zip, run_window_driver
from tests.photo_fixtures import photo_folder  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
GAP_BOUND = 0.5  # seconds a 100 ms UI timer may be starved while a request runs (see test_ui_stays_responsive)


@pytest.fixture(scope="module")
def window(tmp_path_factory, photo_folder):
    """Run the whole scenario once in Blender's GUI; the tests below judge its record."""
    out = tmp_path_factory.mktemp("window")
    print(f"\nwindow test: screenshots, result.json and Blender's output in {out}")
    config = {"out": str(out), "zip": str(built_zip(build_extension.build_legacy, out / "dist")),
              "photo": str(photo_folder / "astronaut.png"), "timeout": 400,
              "preferences": {"server_address": free_address(), "python_path": sys.executable,
                              "server_home": str(REPO), "device": "cpu", "start_timeout": 400.0,
                              "request_timeout": 400.0}}
    result, stderr = run_window_driver(config, out)
    return result, stderr, out


def _events(result, name: str) -> list:
    return [event for event in result["events"] if event["event"] == name]


def _texts_between(result, start: float, end: float, panel: str) -> list:
    return [draw["texts"] for draw in result["draws"] if start <= draw["t"] <= end and draw["panel"] == panel]


def test_legacy_zip_installs_and_enables(window):
    result, _, out = window
    enabled = _events(result, "enabled")[0]
    assert enabled["module"] == str(out / "scripts" / "addons" / "faceforge" / "__init__.py")
    assert enabled["bl_info"]["blender"] == [3, 6, 0] and enabled["bl_info"]["name"] == "FaceForge"


def test_panel_draws_without_errors(window):
    result, stderr, _ = window
    panels = {draw["panel"] for draw in result["draws"]}
    assert panels == {"FACEFORGE_PT_main", "FACEFORGE_PT_server"}
    assert not [draw["error"] for draw in result["draws"] if "error" in draw]
    assert "Traceback" not in stderr, stderr[-3000:]
    texts = {text for draw in result["draws"] for text in draw["texts"]}
    stages = ("Detecting", "Aligning", "Locating", "Fitting", "Meshing", "Detail")  # the server's own progress
    assert any("%" in text and text.split("%", 1)[1].strip(" ·").startswith(stages) for text in texts), texts
    assert {"[faceforge.reconstruct]", "[faceforge.cancel]", "[faceforge.server_start]", "[faceforge.server_stop]",
            "Start", "Stop"} <= texts


def test_reconstruct_builds_the_textured_face(window):
    result, _, _ = window
    face = result["face"]
    assert face["vertices"] > 1000 and face["uv_layers"] == ["UVMap"]
    assert face["modifiers"] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    assert face["textures"] == ["astronaut_texture"] and face["location"] == [0.0, 0.0, 0.0]
    assert _events(result, "reconstructed")[0]["message"][1].startswith("Reconstructed 1 face from astronaut.png")


def test_ui_stays_responsive_while_a_request_runs(window):
    """Only the sidebar redraws, and only when what it shows changed: the viewport is never redrawn for it.

    The longest starvation of a 100 ms timer is then one redraw of this sidebar: milliseconds on a
    GPU, but under software OpenGL on a loaded 2-core machine, with the server computing on the
    same cores, one sidebar redraw alone can take longer than ``GAP_BOUND`` (0.2-0.6 s measured).
    So the bound grows to 1.5 sidebar redraws as measured in this same window under the same load
    (the driver tags the sidebar while a request it sent itself runs); redrawing the whole 3D view,
    as the add-on used to, starved the timer 2-5 times longer than that.
    """
    result, _, _ = window
    gaps = result["max_gap"]
    bound = max(GAP_BOUND, 1.5 * gaps["sidebar redraw"], 1.5 * gaps["sidebar redraw, face in view"])
    print(f"\nmax gap of a 100 ms timer: {gaps} (s); bound while a request runs: {bound:.2f} s")
    assert not [t for phase, t in result["viewport_draws"] if phase == "request"]
    assert gaps["request"] <= bound and gaps["cancel"] <= bound
    assert gaps["stopping"] <= bound  # Stop Server does not wait for the process


def test_esc_cancels_and_creates_nothing(window):
    result, _, _ = window
    pressed = _events(result, "key")[0]
    assert pressed["key"] == "Escape"
    assert result["cancel"] == {"message": ["WARNING", "Reconstruction cancelled"], "new_objects": 0}
    after = [" ".join(texts) for texts in _texts_between(result, pressed["t"] - 0.5, 1e9, "FACEFORGE_PT_main")]
    shown = [text for text in after if "Cancelling" in text or "Reconstruction cancelled" in text]
    print(f"\npanel after Esc: {shown[:3]} ... {shown[-1:]}")
    assert shown and "Reconstruction cancelled" in shown[-1]
    first = next(n for n, text in enumerate(shown) if "Reconstruction cancelled" in text)
    assert all("Cancelling…" in text for text in shown[:first])  # "Cancelling…", then "cancelled"
    assert "Cancelling" not in " ".join(shown[first:])


def test_server_starts_with_elapsed_time_and_stops(window):
    result, _, _ = window
    started = _events(result, "invoke")[0]
    assert started["operator"] == "faceforge.server_start"
    ready = _events(result, "server start finished")[0]
    assert ready["message"][0] == "INFO" and "ready on" in ready["message"][1]
    during = [text for texts in _texts_between(result, started["t"], ready["t"] - 0.5, "FACEFORGE_PT_server")
              for text in texts]
    assert any(text.startswith("Starting server… ") and text.endswith(" s") for text in during)
    assert not [text for text in during if text.startswith("Connected")]  # never the previous server's status
    stop = result["stop"]
    assert stop["status_line"] == "Not connected" and not stop["pid_alive"]
    assert stop["message"][1] in ("Server stopped",) or stop["message"][1].startswith("Server killed")


def test_screenshots(window):
    result, _, out = window
    names = [Path(path).name for path in result["screenshots"]]
    assert names == ["1_before.png", "2_during.png", "3_after.png"]
    assert all((out / name).stat().st_size > 20_000 for name in names)
