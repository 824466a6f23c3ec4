"""Panel and preferences drawing, checked against Blender's real UILayout API.

Headless Blender cannot draw, so ``draw`` runs on a layout that validates every call against
``bpy.types.UILayout``'s RNA: method names, keyword names, enum values (icons, progress type),
property names on the data, and operator ids. A typo that would put a traceback in the sidebar fails here.
"""
from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import pytest

from tests.addon_fixtures import bpy_module  # noqa: F401 (fixture)


class CheckedLayout:
    def __init__(self, bpy, calls: list):
        object.__setattr__(self, "_bpy", bpy)
        object.__setattr__(self, "_calls", calls)

    def __setattr__(self, name, value):
        assert name in self._bpy.types.UILayout.bl_rna.properties, f"UILayout has no property {name!r}"

    def __getattr__(self, name):
        functions = self._bpy.types.UILayout.bl_rna.functions
        assert name in functions, f"UILayout has no function {name!r}"
        params = [p for p in functions[name].parameters if not p.is_output]

        def call(*args, **kwargs):
            named = dict(zip([p.identifier for p in params], args), **kwargs)
            by_name = {p.identifier: p for p in params}
            for key, value in named.items():
                assert key in by_name, f"UILayout.{name}() has no parameter {key!r}"
                param = by_name[key]
                if param.type == "ENUM" and isinstance(value, str):
                    assert value in param.enum_items.keys(), f"{name}({key}={value!r}) is not a valid enum value"
            if "data" in named and "property" in named:
                assert named["property"] in named["data"].bl_rna.properties, f"no property {named['property']!r}"
            self._calls.append((name, named))
            if name == "operator":
                group, _, op = named["operator"].partition(".")
                rna = getattr(getattr(self._bpy.ops, group), op).get_rna_type()  # raises for unknown operators
                return CheckedOperatorProperties(rna, named)
            return CheckedLayout(self._bpy, self._calls)

        return call


class CheckedOperatorProperties:
    """What ``layout.operator`` returns: setting a property the operator lacks fails; what is set is recorded."""

    def __init__(self, rna, named: dict):
        object.__setattr__(self, "_rna", rna)
        object.__setattr__(self, "_named", named)

    def __setattr__(self, name, value):
        assert name in self._rna.properties, f"{self._rna.identifier} has no property {name!r}"
        self._named.setdefault("properties", {})[name] = value


@pytest.fixture(scope="module")
def ui(bpy_module):
    import addon
    from addon.ui import operators, panels, preferences

    addon.register()
    try:
        yield SimpleNamespace(bpy=bpy_module, operators=operators, panels=panels, preferences=preferences)
    finally:
        addon.unregister()


def _draw(ui, panel_class, method="draw"):
    calls = []
    getattr(panel_class, method)(SimpleNamespace(layout=CheckedLayout(ui.bpy, calls)), ui.bpy.context)
    return calls


def _texts(calls):
    return [named.get("text", "") for _, named in calls]


def test_idle_panel(ui):
    calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
    operators = [named["operator"] for name, named in calls if name == "operator"]
    assert operators == ["faceforge.photo_add", "faceforge.photo_add_image", "faceforge.reconstruct"]
    props = {named["property"] for name, named in calls if name == "prop"}
    assert {"photo_source", "photo_path", "face", "resolution", "smooth_iterations", "smooth_factor",
            "subdivision_levels", "detail_strength"} <= props


def test_more_photos_of_the_same_person_are_listed_added_and_removed(ui, tmp_path):
    bpy = ui.bpy
    props = bpy.context.scene.faceforge
    props.photo_path = str(tmp_path / "front.png")
    try:
        assert bpy.ops.faceforge.photo_add(directory=str(tmp_path), files=[{"name": "left.png"}, {"name": "right.png"}]) \
            == {"FINISHED"}
        assert props.more_photo_paths() == [str(tmp_path / "left.png"), str(tmp_path / "right.png")]
        calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
        lists = [named for name, named in calls if name == "template_list"]
        assert len(lists) == 1 and lists[0]["listtype_name"] == "FACEFORGE_UL_photos"
        operators = [named["operator"] for name, named in calls if name == "operator"]
        assert operators == ["faceforge.photo_add", "faceforge.photo_add_image", "faceforge.photo_remove",
                             "faceforge.reconstruct"]
        assert "Reconstruct Head from 3 Photos" in _texts(calls)
        row = []
        ui.panels.FACEFORGE_UL_photos.draw_item(None, bpy.context, CheckedLayout(bpy, row), props,
                                                props.more_photos[0], 0, props, "more_photos_index")
        assert row[0][1]["property"] == "path"
        props.more_photos_index = 0
        assert bpy.ops.faceforge.photo_remove() == {"FINISHED"}
        assert props.more_photo_paths() == [str(tmp_path / "right.png")]
        # An image loaded in Blender joins the list as itself; the request sends its bytes after the files'.
        image = bpy.data.images.new("painted", 8, 8)
        assert bpy.ops.faceforge.photo_add_image(image="painted") == {"FINISHED"}
        assert props.more_photos[-1].image == image and props.more_photo_paths() == [str(tmp_path / "right.png")]
        sources = ui.operators._more_photo_sources(props)
        assert sources[0] == str(tmp_path / "right.png") and sources[1]()[:8] == b"\x89PNG\r\n\x1a\n"
        row = []
        ui.panels.FACEFORGE_UL_photos.draw_item(None, bpy.context, CheckedLayout(bpy, row), props,
                                                props.more_photos[-1], 0, props, "more_photos_index")
        assert row[0][1]["property"] == "image"
        bpy.data.images.remove(image)
    finally:
        props.more_photos.clear()
        props.photo_path = ""


def test_a_video_source_shows_its_file_and_no_photo_list(ui, tmp_path):
    props = ui.bpy.context.scene.faceforge
    props.photo_source, props.video_path = "VIDEO", str(tmp_path / "take.mp4")
    props.more_photos.add().path = str(tmp_path / "left.png")  # kept for photos, not offered with a video
    try:
        calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
        assert [named["property"] for name, named in calls if name == "prop"][:4] == [
            "photo_source", "video_path", "video_first_frame", "video_last_frame"]
        assert not [named for name, named in calls if name == "template_list"]
        assert [named["operator"] for name, named in calls if name == "operator"] == ["faceforge.reconstruct"]
        assert "Reconstruct Animated Head" in _texts(calls)
        assert "video_frames" not in props.server_options()  # 1 .. 0: the whole video
        props.video_first_frame, props.video_last_frame = 11, 25  # Blender's count: 1-based, both ends in
        assert props.server_options()["video_frames"] == "10:25"
        props.video_last_frame = 0
        assert props.server_options()["video_frames"] == "10:"
        props.video_last_frame = 5
        with pytest.raises(ValueError, match=r"Last Frame \(5\) comes before its First Frame \(11\)"):
            ui.operators.submit(ui.bpy.context)
        props.photo_source = "FILE"
        assert "video_frames" not in props.server_options()  # a photo's request carries no frame range
        props.photo_source, props.video_path = "VIDEO", ""
        with pytest.raises(ValueError, match="Choose a video file first"):
            ui.operators.submit(ui.bpy.context)
    finally:
        props.more_photos.clear()
        props.photo_source, props.video_path = "FILE", ""
        props.video_first_frame, props.video_last_frame = 1, 0


@contextlib.contextmanager
def _request_in_flight(session):
    """A reconstruction the panel shows as running: its photo bytes wait until the test ends."""
    gate = threading.Event()
    request = session.submit_reconstruction(lambda: gate.wait(10) and b"", photo_label="a.png", options={},
                                            settings=None, location=(0, 0, 0), address="tcp://127.0.0.1:1", timeout=1)
    try:
        yield request
    finally:
        request.job.cancel()
        gate.set()


def test_busy_panel_shows_progress_and_cancel(ui):
    with _request_in_flight(ui.operators.SESSION):
        ui.bpy.context.scene.faceforge.face = "INDEX"
        ui.bpy.context.scene.faceforge.photo_source = "IMAGE"
        calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
        progress = [named for name, named in calls if name == "progress"]
        assert len(progress) == 1 and 0 <= progress[0]["factor"] <= 0.95
        assert [named["operator"] for name, named in calls if name == "operator"] == ["faceforge.photo_add", "faceforge.photo_add_image",
                                                                                      "faceforge.cancel"]
        assert "face_index" in {named.get("property") for _, named in calls}
        assert any(name == "template_ID" for name, _ in calls)


def test_messages_and_server_state(ui):
    session = ui.operators.SESSION
    session.message = ("ERROR", "No FaceForge server answers at tcp://127.0.0.1:5555: press Start Server or check "
                                "the address in the add-on preferences")
    session.server_log = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'torch'"
    session.status_error = "No FaceForge server answers"
    calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
    assert sum(text.startswith(("No FaceForge", "the address", "Start Server")) or "press" in text
               for text in _texts(calls)) >= 2  # long messages wrap over several labels
    server = _draw(ui, ui.panels.FACEFORGE_PT_server)
    texts = _texts(server)
    assert "Not connected" in texts and "ModuleNotFoundError: No module named 'torch'" in texts
    assert {named["operator"] for name, named in server if name == "operator"} == {"faceforge.server_start",
                                                                                    "faceforge.server_stop"}
    session.status = {"server_version": "0.1.0", "protocol_version": 1, "device": "cuda:0", "device_name": "H100"}
    texts = _texts(_draw(ui, ui.panels.FACEFORGE_PT_server))
    assert "Connected: server 0.1.0, protocol 1, CUDA (H100)" in " ".join(texts)
    assert _draw(ui, ui.panels.FACEFORGE_PT_server, "draw_header_preset")[0][1]["icon"] == "LINKED"


def test_geometry_choice_and_model_status(ui):
    session = ui.operators.SESSION
    props = {named["property"] for name, named in _draw(ui, ui.panels.FACEFORGE_PT_main) if name == "prop"}
    assert {"geometry", "neutral_expression", "resolution", "detail_strength"} <= props
    session.status = {"server_version": "0.1.0", "protocol_version": 2, "device": "cpu", "geometries": ["face"]}
    texts = " ".join(_texts(_draw(ui, ui.panels.FACEFORGE_PT_main)))
    assert "No head model" in texts and "model fetch" in texts
    session.status["geometries"] = ["head", "face"]
    texts = " ".join(_texts(_draw(ui, ui.panels.FACEFORGE_PT_main)))
    assert "Head model installed" in texts and "No head model" not in texts
    session.status = None


def test_options_show_and_travel_only_where_the_geometry_uses_them(ui):
    props = ui.bpy.context.scene.faceforge

    def shown() -> set:
        return {named["property"] for name, named in _draw(ui, ui.panels.FACEFORGE_PT_main) if name == "prop"}

    try:
        assert {"resolution", "depth_backend", "refine", "neutral_expression"} <= shown()  # Auto: either geometry
        assert not {"depth_model", "depth_fuse_weight"} & shown()  # the network's own: only with the network
        props.geometry = "FACE"
        props.depth_backend, props.depth_model, props.depth_fuse_weight = "NETWORK", "My_DPT.v3", 0.25
        assert {"depth_backend", "depth_model", "depth_fuse_weight"} <= shown()
        assert not {"refine", "neutral_expression"} & shown()
        sent = props.server_options()
        assert (sent["geometry"], sent["depth_backend"], sent["depth_model"], sent["depth_fuse_weight"]) == \
            ("face", "network", "My_DPT.v3", 0.25) and "refine" not in sent  # names keep their case
        props.geometry = "HEAD"  # network depth stays picked, hidden: the head request must not carry it
        assert not {"resolution", "depth_backend", "depth_model"} & shown() and "refine" in shown()
        assert not {"resolution", "depth_backend", "depth_model", "depth_fuse_weight"} & set(props.server_options())
        assert "photo_lighting" in shown()  # the lighting comes from the refinement, on by default
        props.refine = "OFF"
        assert "photo_lighting" not in shown()
    finally:
        for name in ("geometry", "depth_backend", "depth_model", "depth_fuse_weight", "refine"):
            props.property_unset(name)


def test_preferences_draw(ui):
    calls = []
    prefs = SimpleNamespace(layout=CheckedLayout(ui.bpy, calls), **vars(ui.preferences.DEFAULTS))
    prefs.bl_rna = ui.preferences.FACEFORGE_AP_preferences.bl_rna
    ui.preferences.FACEFORGE_AP_preferences.draw(prefs, ui.bpy.context)
    assert {named["property"] for name, named in calls if name == "prop"} == {
        "server_address", "request_timeout", "python_path", "server_home", "device", "start_timeout",
        "server_public_key", "client_key_pair", "torch_build", "base_python", "wheel_folder", "package_index",
        "model_source"}
    buttons = [(named["operator"], named.get("properties")) for name, named in calls if name == "operator"]
    assert buttons == [("faceforge.server_install", {"update": False}), ("faceforge.server_install", {"update": True}),
                       ("faceforge.server_remove", None), ("faceforge.model_download", None)]
    texts = _texts(calls)
    assert any(text.startswith("Not installed (it goes in ") for text in texts) and "Install Server…" in texts


def _running_job(gate: threading.Event):
    """A running job that ignores cancellation until ``gate`` opens: a server slow to acknowledge."""
    from addon.server.jobs import Worker

    job = Worker("panel-test").submit(lambda job: gate.wait(10), address="", status="Reconstructing on the server")
    for _ in range(500):
        if job.future.running():
            return job
        time.sleep(0.01)
    raise AssertionError("the job never started")


def test_progress_falls_back_to_text_before_blender_4(ui, monkeypatch):
    """Blender 3.x has no UILayout.progress: the same information as labels, and draw() must not raise."""
    monkeypatch.setattr(ui.panels, "HAS_PROGRESS", False)
    with _request_in_flight(ui.operators.SESSION):
        ui.bpy.context.scene.faceforge.photo_source = "FILE"
        calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
        assert "progress" not in [name for name, _ in calls]
        labels = [named["text"] for name, named in calls if name == "label" and named.get("icon") == "TIME"]
        assert labels and labels[0].startswith("0% · ") and labels[0].endswith("(0 s)")
        assert [named["operator"] for name, named in calls if name == "operator"] == ["faceforge.photo_add", "faceforge.photo_add_image",
                                                                                      "faceforge.cancel"]


def test_cancelling_then_cancelled(ui):
    session = ui.operators.SESSION
    gate = threading.Event()
    job = _running_job(gate)
    session.request = ui.operators.Request(job, "a.png", {}, None)
    try:
        job.cancel()  # running: the future cannot be cancelled, the job ends when it notices
        calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
        progress = [named for name, named in calls if name == "progress"]
        assert progress[0]["text"] == "Cancelling…"
        assert not ui.bpy.ops.faceforge.cancel.poll()  # one cancel is enough
    finally:
        gate.set()
    job.future.exception(timeout=10)
    session.message = ("WARNING", ui.operators.user_message(ui.operators.concurrent.futures.CancelledError()))
    texts = _texts(_draw(ui, ui.panels.FACEFORGE_PT_main))
    assert "Cancelling…" not in texts and "Reconstruction cancelled" in " ".join(texts)
    assert ui.bpy.ops.faceforge.reconstruct.poll()


def test_starting_server_shows_elapsed_time_not_the_old_status(ui):
    session = ui.operators.SESSION
    session.status = {"server_version": "0.1.0", "protocol_version": 1, "device": "cpu"}  # the previous server
    gate = threading.Event()
    session.server_job = _running_job(gate)
    try:
        calls = _draw(ui, ui.panels.FACEFORGE_PT_server)
        status = [named for name, named in calls if name == "label"][0]
        assert status["text"] == "Starting server… 0 s" and status["icon"] == "TIME"
        assert not [text for text in _texts(calls) if text.startswith("Connected")]
        assert not ui.bpy.ops.faceforge.server_start.poll() and not ui.bpy.ops.faceforge.server_stop.poll()
    finally:
        gate.set()
        session.server_job.future.result(timeout=10)
        session.server_job = session.status = None


def test_an_installation_shows_its_progress_in_the_panel_and_cancels(ui):
    """Install Server / Download Head Model: the progress where Reconstruct Face was, Cancel Installation beside it,
    in the sidebar and in the preferences; Cancel sets the job's flag (the installer then ends its pip)."""
    session = ui.operators.SESSION
    gate = threading.Event()
    job = _running_job(gate)
    job.status, job.fraction = "Installing packages (12 of 83)", 0.65
    session.setup = job
    try:
        calls = _draw(ui, ui.panels.FACEFORGE_PT_main)
        progress = [named for name, named in calls if name == "progress"]
        assert progress[0]["text"].startswith("Installing packages (12 of 83) (") and progress[0]["factor"] == 0.65
        assert [named["operator"] for name, named in calls if name == "operator"][-1] == "faceforge.setup_cancel"
        assert "faceforge.reconstruct" not in [named.get("operator") for _, named in calls]
        assert not ui.bpy.ops.faceforge.server_install.poll() and not ui.bpy.ops.faceforge.model_download.poll()
        assert ui.bpy.ops.faceforge.setup_cancel() == {"FINISHED"} and job.cancelled
        assert not ui.bpy.ops.faceforge.setup_cancel.poll()  # once is enough
    finally:
        gate.set()
        job.future.result(timeout=10)
        session.setup = None
