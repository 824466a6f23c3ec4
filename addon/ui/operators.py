"""Operators: Reconstruct Face (modal, Esc cancels), Cancel, Start/Stop Server, and the status timer.

Sockets live on worker threads (``session``); everything here runs on the main thread, which is
the only place bpy is touched. A request is submitted, the modal timer (or ``execute``'s wait in
scripts) watches its future, and ``apply_finished`` builds the objects and words the outcome.
"""
from __future__ import annotations

import concurrent.futures
import os
import traceback
from functools import partial

import bpy
import numpy as np

from ..data import meshdata, photo
from ..scene.build import build_reconstruction
from ..server.jobs import Job, user_message
from ..server.process import find_python
from ..server.session import Request, Session
from . import preferences

SESSION = Session()   # replaced on every register(), closed on unregister()


_shown: tuple | None = None  # SESSION.view_state() as last drawn


def refresh_sidebar(force: bool = False) -> None:
    """Redraw the 3D views' sidebars, and only them, when what the panel shows changed.

    Tagging the whole area also redraws the viewport, which on a heavy scene (or software
    OpenGL) stalls Blender's event loop for seconds while a request runs.
    """
    global _shown
    state = SESSION.view_state()
    if state == _shown and not force:
        return
    _shown = state
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "PREFERENCES":  # the add-on's preferences show Install Server's progress
                area.tag_redraw()
            elif area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()


def _image_source(image: "bpy.types.Image"):
    """Bytes (or a path) for an image datablock: the original file when it is unchanged, else its pixels as PNG."""
    if image.packed_file is not None and not image.is_dirty:
        data = bytes(image.packed_file.data)
        return lambda: data
    path = bpy.path.abspath(image.filepath_raw, library=image.library) if image.source == "FILE" else ""
    if path and os.path.isfile(path) and not image.is_dirty:
        return path
    width, height = image.size
    if not image.has_data or width * height == 0:
        raise ValueError(f"Image {image.name!r} has no pixels to reconstruct from")
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)  # main thread; the PNG encoding runs on the worker
    return partial(photo.encode_png, pixels, width, height, image.channels, linear=image.is_float)


def submit(context) -> Request:
    """Snapshot the panel and queue the request. ValueError carries a message for the user."""
    props = context.scene.faceforge
    prefs = preferences.get(context)
    video = props.photo_source == "VIDEO"
    if video:
        if not props.video_path:
            raise ValueError("Choose a video file first")
        source = label = bpy.path.abspath(props.video_path)
    elif props.photo_source == "FILE":
        if not props.photo_path:
            raise ValueError("Choose a photo file first")
        source = label = bpy.path.abspath(props.photo_path)
    else:
        if props.photo_image is None:
            raise ValueError("Choose an image first")
        source, label = _image_source(props.photo_image), props.photo_image.name
    SESSION.use_keys(*_key_files(prefs))
    return SESSION.submit_reconstruction(
        source, photo_label=label, options=props.server_options(),
        settings=props.build_settings(), location=tuple(context.scene.cursor.location),
        address=prefs.server_address, timeout=prefs.request_timeout,
        more_photos=() if video else _more_photo_sources(props), video=video)


def _more_photo_sources(props) -> tuple:
    """The other photos of the same person, in the list's order: a file's path, or an image's bytes maker."""
    return tuple(_image_source(row.image) if row.image is not None else bpy.path.abspath(row.path)
                 for row in props.more_photos if row.image is not None or row.path)


def apply_finished(context, request: Request) -> tuple:
    """Main thread: a finished request -> objects. Returns (level, message, objects) and never raises."""
    try:
        info, reconstruction = request.job.future.result(timeout=0)
    except BaseException as exc:
        level = "WARNING" if request.job.cancelled else "ERROR"
        return level, user_message(exc, photo=request.photo, address=request.address), []
    metadata = meshdata.reconstruction_metadata(
        reconstruction.meta, info, request.photo, request.options, server_address=request.address,
        round_trip_ms=round(request.job.elapsed * 1000, 1))
    try:
        objects = build_reconstruction(reconstruction, photo=request.photo, settings=request.settings,
                                             metadata=metadata, location=request.location,
                                             collection=context.collection)
    except (ValueError, KeyError) as exc:  # a malformed reply: say so
        traceback.print_exc()
        return "ERROR", f"The server's reply could not be turned into a mesh: {exc}", []
    _select(context, objects)
    vertices = sum(len(obj.data.vertices) for obj in objects)
    video = reconstruction.faces[0].meta.get("video") if reconstruction.faces else None
    if video:
        return "INFO", (f"Reconstructed an animated head from {os.path.basename(request.photo)}: "
                        f"{video['tracked']} of {video['frames']} frames followed, keyed at the scene's frame "
                        f"rate, in {request.job.elapsed:.1f} s{_rate_note(context.scene, video, request.settings)}"
                        ), objects
    return "INFO", (f"Reconstructed {len(objects)} face{'s' * (len(objects) != 1)} from "
                    f"{os.path.basename(request.photo)} ({vertices} vertices) in {request.job.elapsed:.1f} s"), objects


def _rate_note(scene, video: dict, settings) -> str:
    """A movie clip plays one of its frames per scene frame: at another frame rate the Video Camera's background
    drifts from the keys, which follow the video's clock. Say so rather than change the user's frame rate."""
    scene_fps = scene.render.fps / scene.render.fps_base
    if not settings.video_camera or abs(scene_fps - video["fps"]) <= 0.01 * video["fps"]:
        return ""
    return (f". The video runs at {video['fps']:g} fps and the scene at {scene_fps:g}: the Video Camera's "
            "background lines up with the head only at the video's rate (Output Properties > Frame Rate)")


def _select(context, objects: list) -> None:
    if not objects or context.view_layer is None:
        return
    for obj in context.view_layer.objects.selected:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    context.view_layer.objects.active = objects[0]


class _AwaitJob:
    """Modal wait on a worker job: redraws while it runs, Esc cancels, ``conclude`` reports. ``execute`` blocks (scripts)."""

    def start(self, context) -> Job | None:
        raise NotImplementedError

    def conclude(self, context) -> set:
        raise NotImplementedError

    def _started(self, context) -> Job | None:
        try:
            return self.start(context)
        except ValueError as exc:
            SESSION.message = ("ERROR", str(exc))
            self.report({"ERROR"}, str(exc))
            return None

    def invoke(self, context, event):
        self._job = self._started(context)
        if self._job is None:
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        refresh_sidebar()
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            refresh_sidebar()  # "Cancelling…"; the outcome is concluded on a later timer event
            return {"RUNNING_MODAL"}
        if not self._job.done():
            if event.type == "TIMER":
                refresh_sidebar()
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        result = self.conclude(context)
        refresh_sidebar()
        return result

    def execute(self, context):
        self._job = self._started(context)
        if self._job is None:
            return {"CANCELLED"}
        concurrent.futures.wait([self._job.future])
        return self.conclude(context)

    def _report(self, level: str, message: str) -> None:
        SESSION.message = (level, message)
        self.report({level}, message)


class FACEFORGE_OT_reconstruct(_AwaitJob, bpy.types.Operator):
    """Send the photo to the FaceForge server and build a textured face mesh at the 3D cursor (Esc cancels)"""

    bl_idname = "faceforge.reconstruct"
    bl_label = "Reconstruct Face"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return not SESSION.busy and context.mode == "OBJECT"

    def start(self, context) -> Job:
        return submit(context).job

    def conclude(self, context) -> set:
        request = SESSION.request
        level, message, objects = apply_finished(context, request)
        self._report(level, message)
        return {"FINISHED"} if objects else {"CANCELLED"}


class FACEFORGE_OT_cancel(bpy.types.Operator):
    """Abandon the running reconstruction (its reply, if any, is dropped)"""

    bl_idname = "faceforge.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return SESSION.busy and not SESSION.cancelling

    def execute(self, context):
        SESSION.cancel_request()
        refresh_sidebar()
        return {"FINISHED"}


class FACEFORGE_OT_server_start(_AwaitJob, bpy.types.Operator):
    """Start a local inference server with the interpreter and directory from the add-on preferences"""

    bl_idname = "faceforge.server_start"
    bl_label = "Start Server"

    @classmethod
    def poll(cls, context):
        return (SESSION.server_job is None and SESSION.stopping is None
                and (SESSION.server is None or not SESSION.server.running))

    def start(self, context) -> Job:
        prefs = preferences.get(context)
        python = find_python(bpy.path.abspath(prefs.python_path) if prefs.python_path else None)
        if python is None:
            raise ValueError("No Python with torch found: set the server's Python in the add-on preferences "
                             "or $FACEFORGE_PYTHON")
        SESSION.message = ("INFO", "Starting the server (loading models)")
        return SESSION.start_server(python, prefs.server_address,
                                    bpy.path.abspath(prefs.server_home), prefs.device, prefs.start_timeout)

    def conclude(self, context) -> set:
        level, message = SESSION.finish_server_start()
        self._report(level, message)
        return {"FINISHED"} if level == "INFO" else {"CANCELLED"}


class FACEFORGE_OT_server_stop(bpy.types.Operator):
    """Stop the local server this add-on started (it gets a few seconds to exit cleanly, then it is killed)"""

    bl_idname = "faceforge.server_stop"
    bl_label = "Stop Server"

    @classmethod
    def poll(cls, context):
        return SESSION.server is not None and SESSION.server_job is None

    def execute(self, context):
        SESSION.begin_stop_server()  # the status timer reaps the process: the UI never waits for it
        SESSION.message = ("INFO", "Stopping the server")
        refresh_sidebar()
        return {"FINISHED"}


def _key_files(prefs) -> tuple:
    return bpy.path.abspath(prefs.server_public_key), bpy.path.abspath(prefs.client_key_pair)


def _tick() -> float:
    """bpy.app.timers: status probes and stopping servers, polled without blocking; faster while something runs."""
    prefs = preferences.get(bpy.context)
    try:
        SESSION.use_keys(*_key_files(prefs))
        SESSION.poll_status(prefs.server_address)
    except ValueError as exc:  # unusable key files: say so where the status goes
        SESSION.status, SESSION.status_error = None, str(exc)
    stopped = SESSION.poll_stopping()
    if stopped is not None:
        SESSION.message = stopped
    refresh_sidebar()
    if SESSION.stopping is not None:
        return 0.1
    setting_up = SESSION.setup is not None and not SESSION.setup.done()
    return 0.25 if SESSION.status_job is not None or SESSION.busy or SESSION.server_job is not None or setting_up else 1.0


class FACEFORGE_OT_photo_add(bpy.types.Operator):
    """Add other photos of the same person: head mode fits one head to all of them"""

    bl_idname = "faceforge.photo_add"
    bl_label = "Add Photos"
    bl_options = {"REGISTER", "INTERNAL"}

    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement, options={"HIDDEN", "SKIP_SAVE"})
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        props = context.scene.faceforge
        for entry in self.files:
            if entry.name:
                props.more_photos.add().path = os.path.join(self.directory, entry.name)
        props.more_photos_index = max(0, len(props.more_photos) - 1)
        refresh_sidebar()
        return {"FINISHED"}


_IMAGE_ITEMS: list = []  # Blender keeps only pointers to an enum callback's strings: they must outlive the call


def _loaded_images(self, context) -> list:
    _IMAGE_ITEMS[:] = [(image.name, image.name, "") for image in bpy.data.images
                       if image.type in ("IMAGE", "UV_TEST") and image.source in ("FILE", "GENERATED")]
    return _IMAGE_ITEMS or [("", "(no images loaded)", "")]


class FACEFORGE_OT_photo_add_image(bpy.types.Operator):
    """Add an image loaded in Blender as another photo of the same person"""

    bl_idname = "faceforge.photo_add_image"
    bl_label = "Add Loaded Image"
    bl_options = {"REGISTER", "INTERNAL"}
    bl_property = "image"

    image: bpy.props.EnumProperty(name="Image", items=_loaded_images, options={"SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.invoke_search_popup(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        image = bpy.data.images.get(self.image)
        if image is None:
            self.report({"WARNING"}, "No image chosen")
            return {"CANCELLED"}
        props = context.scene.faceforge
        props.more_photos.add().image = image
        props.more_photos_index = len(props.more_photos) - 1
        refresh_sidebar()
        return {"FINISHED"}


class FACEFORGE_OT_photo_remove(bpy.types.Operator):
    """Remove the selected photo from the list"""

    bl_idname = "faceforge.photo_remove"
    bl_label = "Remove Photo"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        props = context.scene.faceforge
        if 0 <= props.more_photos_index < len(props.more_photos):
            props.more_photos.remove(props.more_photos_index)
            props.more_photos_index = min(props.more_photos_index, max(0, len(props.more_photos) - 1))
        refresh_sidebar()
        return {"FINISHED"}


classes = (FACEFORGE_OT_reconstruct, FACEFORGE_OT_cancel, FACEFORGE_OT_server_start, FACEFORGE_OT_server_stop,
           FACEFORGE_OT_photo_add, FACEFORGE_OT_photo_add_image, FACEFORGE_OT_photo_remove)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    global SESSION, _shown
    SESSION, _shown = Session(), None
    _register_classes()
    bpy.app.timers.register(_tick, first_interval=0.5, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _unregister_classes()
    SESSION.close()
