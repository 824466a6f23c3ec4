"""Install Server, Update, Remove, Download Head Model: an artist's set-up without a terminal.

The work (pip, ``model fetch``) runs in child processes on the session's set-up worker
(``server/installer.py``); here are the buttons, the licence dialog and the preferences section that
shows the progress. In the UI each operator waits modally (Esc cancels); from a script it blocks.
"""
from __future__ import annotations

import bpy

from ..server import environment, installer
from ..server.jobs import Job
from ..server.process import find_python, find_home
from . import operators, panels, preferences
from .operators import _AwaitJob, refresh_sidebar


def _settings(prefs, update: bool) -> installer.InstallSettings:
    return installer.InstallSettings(
        base_python=bpy.path.abspath(prefs.base_python) if prefs.base_python else "", torch=prefs.torch_build,
        wheel_folder=bpy.path.abspath(prefs.wheel_folder) if prefs.wheel_folder else "",
        index_url=prefs.package_index.strip(), update=update)


def _idle() -> bool:
    setup = operators.SESSION.setup
    return setup is None or setup.done()


def _outcome(job: Job, done: str) -> tuple:
    """(level, message) of a finished set-up job."""
    try:
        result = job.future.result(timeout=0)
    except BaseException as exc:  # Cancelled, RuntimeError, ValueError, OSError: all end as one sentence
        if job.cancelled or isinstance(exc, installer.Cancelled):
            return "WARNING", "Cancelled: press the button again to go on where it stopped"
        operators.SESSION.server_log = getattr(exc, "tail", "")  # pip's last lines, in the Server panel's log box
        return "ERROR", f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)
    operators.SESSION.server_log = ""
    return "INFO", done.format(result=result)


class _SetupStep(_AwaitJob):
    """A set-up job awaited like a reconstruction; ``done`` words its result (``{result}``)."""

    done = ""

    def conclude(self, context) -> set:
        level, message = _outcome(operators.SESSION.setup, self.done)
        self._report(level, message)
        return {"FINISHED"} if level == "INFO" else {"CANCELLED"}


class FACEFORGE_OT_server_install(_SetupStep, bpy.types.Operator):
    """Make the server's own Python environment in your user data folder and install the server into it with pip
    (progress below; Esc or Cancel stops it, and pressing it again resumes)"""

    bl_idname = "faceforge.server_install"
    bl_label = "Install Server"

    done = "Server {result.server_version} installed (torch {result.torch}): press Start Server"
    update: bpy.props.BoolProperty(name="Update", default=False, options={"SKIP_SAVE"},
                                   description="Newer packages for the installed server")

    @classmethod
    def poll(cls, context):
        return _idle()

    def start(self, context) -> Job:
        settings = _settings(preferences.get(context), self.update)
        server = operators.SESSION.server
        if server is not None and server.python == str(
                environment.environment_python(environment.environment_dir())):
            operators.SESSION.stop_server()  # its files are about to be replaced (Windows cannot replace them in use)
        operators.SESSION.message = ("INFO", "Updating the server" if self.update else "Installing the server")
        return operators.SESSION.submit_setup(lambda job: installer.install_server(job, settings),
                                    "Preparing the installation")



class _AskFirst:
    """A button that asks (its ``invoke``), then runs the operator ``then`` modally: the work never blocks the UI."""

    then = ""

    def execute(self, context):
        return getattr(bpy.ops.faceforge, self.then)("INVOKE_DEFAULT")


class FACEFORGE_OT_server_remove(_AskFirst, bpy.types.Operator):
    """Delete the server's environment (the head model stays installed); asks first"""

    bl_idname = "faceforge.server_remove"
    bl_label = "Remove Server"
    then = "server_delete"

    @classmethod
    def poll(cls, context):
        return _idle() and environment.environment_dir().exists()

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)


class FACEFORGE_OT_server_delete(_SetupStep, bpy.types.Operator):
    """Delete the server's environment now (Remove Server asks first)"""

    bl_idname = "faceforge.server_delete"
    bl_label = "Delete Server Environment"
    bl_options = {"INTERNAL"}
    done = "Removed {result}"

    def start(self, context) -> Job:
        operators.SESSION.stop_server()
        return operators.SESSION.submit_setup(installer.remove_server, "Removing the server")



class FACEFORGE_OT_model_download(_AskFirst, bpy.types.Operator):
    """Download ICT-FaceKit, the head model that full heads with expression shape keys need (its licence is shown
    first)"""

    bl_idname = "faceforge.model_download"
    bl_label = "Download Head Model"
    then = "model_fetch"

    @classmethod
    def poll(cls, context):
        return _idle()

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=420)

    def draw(self, context):
        panels._wrapped(self.layout, installer.MODEL_LICENCE, "INFO", 64)
        self.layout.label(text="Press OK to download and install it.")


class FACEFORGE_OT_model_fetch(_SetupStep, bpy.types.Operator):
    """Download and install the head model with the server's Python (the server restarts to load it)"""

    bl_idname = "faceforge.model_fetch"
    bl_label = "Fetch Head Model"
    bl_options = {"INTERNAL"}
    done = "Head model installed: full heads with 53 expression shape keys"

    def start(self, context) -> Job:
        prefs = preferences.get(context)
        python = find_python(bpy.path.abspath(prefs.python_path) if prefs.python_path else None)
        if python is None:
            raise ValueError("Install the server first (Preferences > Add-ons > FaceForge > Install Server)")
        source = prefs.model_source.strip()
        source = bpy.path.abspath(source) if source and "://" not in source else source
        home = bpy.path.abspath(prefs.server_home) or find_home()
        server = operators.SESSION.server

        def fetch(job: Job) -> str:
            said = installer.download_model(job, python, source, cwd=home or None)
            if server is not None and server.running:  # it loaded the models at start: load the new one
                job.status, job.fraction = "Restarting the server to load the head model", 0.95
                server.stop()
                server.start(prefs.start_timeout, cancel=job.cancel_event)
            return said

        operators.SESSION.message = ("INFO", "Downloading the head model")
        return operators.SESSION.submit_setup(fetch, "Downloading the head model")

    def conclude(self, context) -> set:
        operators.SESSION.status_time = float("-inf")  # ask the server again at once: the model line turns green
        return super().conclude(context)


class FACEFORGE_OT_setup_cancel(bpy.types.Operator):
    """Stop the running installation or download (pressing its button again resumes it)"""

    bl_idname = "faceforge.setup_cancel"
    bl_label = "Cancel Installation"

    @classmethod
    def poll(cls, context):
        setup = operators.SESSION.setup
        return setup is not None and not setup.done() and not setup.cancelled

    def execute(self, context):
        operators.SESSION.setup.cancel_event.set()  # the child process is terminated; the job then ends as cancelled
        refresh_sidebar(force=True)
        return {"FINISHED"}


def draw_environment(layout, prefs) -> None:
    """Install / Update / Remove Server and Download Head Model, with the running step's progress."""
    box = layout.box()
    box.label(text="Server Environment", icon="CONSOLE")
    server = environment.installed()
    if server is not None:
        box.label(text=f"Installed: server {server.server_version}, torch {server.torch}, "
                       f"{server.device.upper()} ({server.installed_at})", icon="CHECKMARK")
        box.label(text=server.python)
    else:
        box.label(text=f"Not installed (it goes in {environment.environment_dir()})", icon="INFO")
    panels.draw_setup_progress(box)
    row = box.row()
    row.operator("faceforge.server_install", text="Install Server…" if server is None else "Reinstall",
                 icon="IMPORT").update = False
    row.operator("faceforge.server_install", text="Update", icon="FILE_REFRESH").update = True
    row.operator("faceforge.server_remove", text="Remove", icon="TRASH")
    column = box.column()
    column.use_property_split = True
    column.prop(prefs, "torch_build", expand=True)
    if prefs.torch_build == "cuda" and not environment.nvidia_driver_present():
        column.label(text="No NVIDIA driver found here: CUDA would not be used", icon="ERROR")
    column.prop(prefs, "base_python")
    column.prop(prefs, "wheel_folder")
    column.prop(prefs, "package_index")
    column.prop(prefs, "model_source")
    box.operator("faceforge.model_download", icon="IMPORT")


classes = (FACEFORGE_OT_server_install, FACEFORGE_OT_server_remove, FACEFORGE_OT_server_delete,
           FACEFORGE_OT_model_download,
           FACEFORGE_OT_model_fetch, FACEFORGE_OT_setup_cancel)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    preferences.SECTIONS.append(draw_environment)


def unregister() -> None:
    preferences.SECTIONS.remove(draw_environment)
    _unregister_classes()
