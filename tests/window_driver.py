"""Runs inside Blender's GUI for tests/test_addon_window.py: uses the FaceForge panel as a person would.

    blender --factory-startup -p 0 0 W H --python tests/window_driver.py -- CONFIG.json

The add-on comes from the legacy zip (Preferences > Add-ons > Install) or, with ``"source"``, from a
checkout. A scenario steps on ``bpy.app.timers`` so Blender's event loop keeps running between
steps: real key presses (xdotool) reach the window, the panel redraws, modal operators get timer
events. It records what the panel drew (the texts passed to the real UILayout), the longest gap of
a 100 ms timer per phase, screenshots, and the built object, then writes ``result.json`` and quits.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import addon_utils
import bpy

CONFIG = json.loads(Path(sys.argv[sys.argv.index("--") + 1]).read_text())
OUT = Path(CONFIG["out"])
RESULT: dict = {"errors": [], "draws": [], "max_gap": {}, "long_gaps": [], "viewport_draws": [], "screenshots": [],
                "events": []}
STARTED = time.monotonic()


def note(event: str, **details) -> None:
    RESULT["events"].append({"t": round(time.monotonic() - STARTED, 2), "event": event, **details})
    print(f"DRIVER {event} {details}", flush=True)


class RecordingLayout:
    """Forwards every call to the real UILayout and keeps the ``text`` it was given (``[id]`` for operators)."""

    def __init__(self, layout, texts: list):
        object.__setattr__(self, "_layout", layout)
        object.__setattr__(self, "_texts", texts)

    def __setattr__(self, name, value):
        setattr(self._layout, name, value)

    def __getattr__(self, name):
        attribute = getattr(self._layout, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            if name == "operator":
                self._texts.append(f"[{kwargs.get('operator') or args[0]}]")
            if kwargs.get("text"):
                self._texts.append(kwargs["text"])
            result = attribute(*args, **kwargs)
            return RecordingLayout(result, self._texts) if isinstance(result, bpy.types.UILayout) else result

        return call


def record_draws(panel_classes) -> None:
    """Wrap the panels' draw methods (re-registered: Blender keeps the method it saw at registration)."""
    for panel_class in reversed(panel_classes):  # children first
        bpy.utils.unregister_class(panel_class)
    for panel_class in panel_classes:
        panel_class.draw = _recording(panel_class.__name__, panel_class.draw)
        bpy.utils.register_class(panel_class)


def _recording(panel: str, draw):
    def recording_draw(self, context):
        texts: list = []
        began = time.monotonic()
        entry = {"t": round(began - STARTED, 2), "panel": panel, "texts": texts}
        RESULT["draws"].append(entry)
        try:
            draw(_PanelView(RecordingLayout(self.layout, texts)), context)
        except Exception:
            entry["error"] = traceback.format_exc()
            raise
        finally:
            entry["ms"] = round((time.monotonic() - began) * 1000, 1)

    return recording_draw


class _PanelView:
    def __init__(self, layout):
        self.layout = layout


class Ticker:
    """A 100 ms ``bpy.app.timers`` tick, as any add-on or UI animation would have: the longest gap per phase,
    every gap over 0.3 s, and how often the viewport (not the sidebar) was redrawn in each phase."""

    def __init__(self):
        self.phase = "idle"
        self.last = None
        self.request_running = lambda: False  # the add-on's request job still running (set by the scenario)

    def __call__(self) -> float:
        now = time.monotonic()
        if self.last is not None:
            gaps = RESULT["max_gap"]
            gaps[self.phase] = round(max(gaps.get(self.phase, 0.0), now - self.last), 3)
            if now - self.last > 0.3:
                RESULT["long_gaps"].append([self.phase, round(self.last - STARTED, 2), round(now - self.last, 3)])
        self.last = now
        return 0.1

    def viewport_drawn(self) -> None:
        """A viewport redraw; in the request phase only those while the job runs are the add-on's doing
        (once it is done, the new object is drawn, as it should be)."""
        phase = self.phase if self.phase != "request" or self.request_running() else "request done"
        RESULT["viewport_draws"].append([phase, round(time.monotonic() - STARTED, 2)])


TICKER = Ticker()


def view3d():
    window = bpy.context.window_manager.windows[0]
    area = next(a for a in window.screen.areas if a.type == "VIEW_3D")
    return window, area, {r.type: r for r in area.regions}


def invoke(operator: str) -> set:
    """An operator as a button in the 3D view's sidebar runs it: INVOKE_DEFAULT with the view's context."""
    window, area, regions = view3d()
    group, name = operator.split(".")
    with bpy.context.temp_override(window=window, screen=window.screen, area=area, region=regions["UI"]):
        result = getattr(getattr(bpy.ops, group), name)("INVOKE_DEFAULT")
    note("invoke", operator=operator, result=sorted(result))
    return result


def xdotool(*args: str) -> None:
    """Real X input events, through the X server like a person's keyboard and mouse (not waited for: the UI runs on)."""
    subprocess.Popen(["xdotool", *args])


def press(key: str) -> None:
    xdotool("key", key)
    note("key", key=key)


def screenshot(name: str) -> None:
    window = bpy.context.window_manager.windows[0]
    area = max(window.screen.areas, key=lambda a: a.width * a.height)  # the 3D view, or the preferences
    region = next(r for r in area.regions if r.type == "WINDOW")
    path = OUT / f"{name}.png"
    with bpy.context.temp_override(window=window, screen=window.screen, area=area, region=region):
        bpy.ops.screen.screenshot(filepath=str(path), check_existing=False)
    RESULT["screenshots"].append(str(path))
    TICKER.last = None  # the driver's own pause: not a gap the add-on caused


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        yield 0.1


def wait(seconds: float):
    yield from wait_until(lambda deadline=time.monotonic() + seconds: time.monotonic() >= deadline, seconds + 5, "")


def enable_addon() -> tuple:
    """Install the legacy zip as Preferences > Add-ons > Install does (or import a checkout); the package's modules."""
    if CONFIG.get("source"):
        sys.path.insert(0, CONFIG["source"])
        import addon

        addon.register()
        package, preferences = "addon", sys.modules["addon.preferences"].DEFAULTS
    else:
        bpy.ops.preferences.addon_install(filepath=CONFIG["zip"], overwrite=True)
        package = "faceforge"
        module = addon_utils.enable(package, default_set=True)
        note("enabled", module=getattr(module, "__file__", None), bl_info=getattr(module, "bl_info", None))
        preferences = bpy.context.preferences.addons[package].preferences
    for key, value in CONFIG["preferences"].items():
        setattr(preferences, key, value)
    return (sys.modules[f"{package}.ui.operators"], sys.modules[f"{package}.ui.panels"],
            sys.modules[f"{package}.wire.client"])


def show_faceforge_tab(draws_of_main):
    """Open the sidebar and scroll its tabs with the mouse wheel until the FaceForge panel draws."""
    window, area, regions = view3d()
    area.spaces.active.show_region_ui = True
    yield from wait(1.0)
    region = regions["UI"]
    x, y = region.x + region.width - 8, window.height - (region.y + region.height // 2)  # over the tabs
    for _attempt in range(8):
        before = draws_of_main()
        xdotool("mousemove", str(x), str(y), "sleep", "0.2", "click", "5")  # wheel down: next tab
        note("wheel", x=x, y=y)
        yield from wait(1.5)
        if draws_of_main() > before:
            return
    raise AssertionError("the FaceForge tab never drew after 8 wheel steps over the sidebar's tabs")


def face_summary(name: str) -> dict:
    obj = bpy.data.objects.get(name)
    if obj is None:
        return {}
    material = obj.active_material
    textures = [n.image.name for n in material.node_tree.nodes if n.type == "TEX_IMAGE" and n.image] if material else []
    return {"vertices": len(obj.data.vertices), "uv_layers": [uv.name for uv in obj.data.uv_layers],
            "modifiers": [m.type for m in obj.modifiers], "textures": textures, "location": list(obj.location)}


def frame_front(obj) -> None:
    """Front view on the new face, textured solid shading (cheap under software OpenGL)."""
    window, area, regions = view3d()
    area.spaces.active.shading.type = "SOLID"
    area.spaces.active.shading.color_type = CONFIG.get("color_type", "TEXTURE")
    for other in bpy.context.view_layer.objects.selected:
        other.select_set(False)
    obj.select_set(True)
    with bpy.context.temp_override(window=window, screen=window.screen, area=area, region=regions["WINDOW"]):
        bpy.ops.view3d.view_axis(type="FRONT")
        bpy.ops.view3d.view_selected()
    TICKER.last = None


def calibrate(phase: str, client_module):
    """What one redraw of this sidebar costs here and now, while the server computes on the same CPU
    (a request sent past the add-on): the yardstick for the gaps."""
    def keep_the_server_busy():
        with client_module.Client(CONFIG["preferences"]["server_address"], timeout=CONFIG["timeout"]) as client:
            client.reconstruct(Path(CONFIG["photo"]).read_bytes(), {}, timeout=CONFIG["timeout"])

    busy = threading.Thread(target=keep_the_server_busy, daemon=True)
    busy.start()
    TICKER.phase = phase
    for _ in range(10):
        view3d()[2]["UI"].tag_redraw()
        yield from wait(0.5)
    TICKER.phase = "idle"
    yield from wait_until(lambda: not busy.is_alive(), CONFIG["timeout"], "the calibration request")


def open_panel():
    yield from show_faceforge_tab(lambda: sum(d["panel"] == "FACEFORGE_PT_main" for d in RESULT["draws"]))
    yield from wait(3.0)
    screenshot("1_before")


def start_server(session):
    TICKER.phase = "starting"
    invoke("faceforge.server_start")
    yield from wait_until(lambda: session().server_job is None, CONFIG["timeout"], "the server to start")
    note("server start finished", message=session().message)
    yield from wait_until(lambda: session().status is not None, 60, "the status line to say connected")
    TICKER.phase = "idle"


def server_working(session) -> bool:
    """The server has reported a per-face stage for the request in flight (its progress is real)."""
    request = session().request
    return request is not None and (request.job.done() or request.job.fraction >= 0.15)


def reconstruct(session):
    props = bpy.context.scene.faceforge
    props.photo_path = CONFIG["photo"]
    props.resolution = 400  # the heaviest mesh the schema allows: seconds of server work to watch and cancel
    TICKER.request_running = lambda: session().busy
    TICKER.phase = "request"
    invoke("faceforge.reconstruct")
    yield from wait_until(lambda: server_working(session), CONFIG["timeout"], "the server's first face stage")
    screenshot("2_during")
    yield from wait_until(lambda: not session().busy, CONFIG["timeout"], "the reconstruction")
    TICKER.phase = "idle"
    yield from wait(1.0)  # the modal operator builds the object on its next timer event
    note("reconstructed", message=session().message)
    name = Path(CONFIG["photo"]).stem
    RESULT["face"] = face_summary(name)
    if name in bpy.data.objects:
        frame_front(bpy.data.objects[name])
    yield from wait(2.0)
    screenshot("3_after")


def cancel_with_esc(session):
    objects = len(bpy.data.objects)
    TICKER.phase = "cancel"
    invoke("faceforge.reconstruct")
    yield from wait_until(lambda: session().request is not None and session().request.job.fraction > 0, 60,
                          "the server to start on the request")
    press("Escape")
    yield from wait_until(lambda: not session().busy, 60, "the cancellation")
    yield from wait(1.0)
    TICKER.phase = "idle"
    RESULT["cancel"] = {"message": list(session().message), "new_objects": len(bpy.data.objects) - objects}
    note("cancelled", **RESULT["cancel"])


def stop_server(session):
    TICKER.phase = "stopping"
    pid = session().server.pid
    invoke("faceforge.server_stop")
    yield from wait_until(lambda: session().server is None and getattr(session(), "stopping", None) is None, 60,
                          "the server to stop")
    yield from wait(1.0)
    TICKER.phase = "idle"
    RESULT["stop"] = {"message": list(session().message), "status_line": session().status_line(),
                      "pid_alive": Path(f"/proc/{pid}").exists()}
    note("stopped", **RESULT["stop"])


def scenario():
    operators, panels, client_module = enable_addon()
    session = lambda: operators.SESSION  # noqa: E731 (register() replaces it)
    record_draws([panels.FACEFORGE_PT_main, panels.FACEFORGE_PT_server])
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.app.timers.register(TICKER, first_interval=0.1, persistent=True)
    bpy.types.SpaceView3D.draw_handler_add(TICKER.viewport_drawn, (), "WINDOW", "POST_PIXEL")
    yield from open_panel()
    yield from start_server(session)
    yield from calibrate("sidebar redraw", client_module)
    yield from reconstruct(session)
    yield from calibrate("sidebar redraw, face in view", client_module)
    yield from cancel_with_esc(session)
    yield from stop_server(session)
    yield from wait(1.0)


def install_server(session):
    """Install Server from the sidebar as an artist does (no server anywhere yet); the progress in the sidebar
    and in the add-on's preferences, shown in the big area while pip runs."""
    TICKER.phase = "install"
    yield from wait(2.0)
    RESULT["offered"] = any("faceforge.server_install" in text for draw in RESULT["draws"] for text in draw["texts"])
    invoke("faceforge.server_install")
    yield from wait_until(lambda: session().setup is not None and "Installing packages" in session().setup.status,
                          CONFIG["timeout"], "pip to install packages")
    yield from wait(1.0)
    screenshot("install_sidebar")
    window, area, _regions = view3d()
    bpy.context.preferences.active_section = "ADDONS"
    bpy.context.window_manager.addon_search = "FaceForge"
    addon_utils.modules()  # the preferences list the add-ons from these file-parsed stand-ins, not sys.modules
    addon_utils.module_bl_info(addon_utils.addons_fake_modules["faceforge"])["show_expanded"] = True
    area.type = "PREFERENCES"
    yield from wait(3.0)
    screenshot("install_preferences")
    yield from wait_until(lambda: session().setup.done(), CONFIG["timeout"], "the installation")
    yield from wait(2.0)
    screenshot("installed_preferences")
    area.type = "VIEW_3D"
    TICKER.phase = "idle"
    RESULT["install"] = {"message": list(session().message)}
    note("installed", **RESULT["install"])


def install_scenario():
    operators, panels, _client = enable_addon()
    record_draws([panels.FACEFORGE_PT_main, panels.FACEFORGE_PT_server])
    bpy.app.timers.register(TICKER, first_interval=0.1, persistent=True)
    yield from show_faceforge_tab(lambda: sum(d["panel"] == "FACEFORGE_PT_main" for d in RESULT["draws"]))
    yield from install_server(lambda: operators.SESSION)


def finish() -> None:
    (OUT / "result.json").write_text(json.dumps(RESULT, indent=1))
    bpy.context.preferences.view.use_save_prompt = False
    window = bpy.context.window_manager.windows[0]
    with bpy.context.temp_override(window=window, screen=window.screen):
        bpy.ops.wm.quit_blender()


def main() -> None:
    bpy.context.preferences.view.show_splash = False
    # Software OpenGL: without this every viewport change costs 8 anti-aliasing redraws of ~1 s each,
    # which would hide what the add-on itself costs.
    bpy.context.preferences.system.viewport_aa = CONFIG.get("viewport_aa", "OFF")
    steps = install_scenario() if CONFIG.get("scenario") == "install" else scenario()

    def step():
        try:
            return next(steps)
        except StopIteration:
            pass
        except Exception:
            RESULT["errors"].append(traceback.format_exc())
            print(RESULT["errors"][-1], file=sys.stderr, flush=True)
        finish()
        return None

    bpy.app.timers.register(step, first_interval=1.0)


main()
