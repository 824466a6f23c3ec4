"""The FaceForge tab in the 3D viewport sidebar (N panel). Drawing only reads state; operators change it."""
from __future__ import annotations

import bpy

from ..server import environment
from ..server.process import find_home
from . import operators
from .properties import PANEL_OPTIONS, applies

_ICONS = {"INFO": "INFO", "WARNING": "ERROR", "ERROR": "CANCEL"}
HAS_PROGRESS = "progress" in bpy.types.UILayout.bl_rna.functions  # Blender 4.0+


def progress_bar(layout, factor: float, text: str, width: int = 48) -> None:
    """A progress bar where Blender has one (4.0+), else the percentage and text as labels (3.x)."""
    if HAS_PROGRESS:
        layout.progress(factor=factor, type="BAR", text=text)
    else:
        _wrapped(layout, f"{factor:.0%} · {text}", "TIME", width)


def _chars_per_line(context) -> int:
    """How many characters fit beside an icon in the sidebar (about 6 px each, 95 px of tabs, margins and icon)."""
    region = getattr(context, "region", None)
    if region is None:
        return 48
    scale = context.preferences.system.ui_scale
    return max(16, int((region.width - 95 * scale) / (6 * scale)))


def _wrapped(layout, text: str, icon: str = "NONE", width: int = 48) -> None:
    """Long messages as several labels: the sidebar does not wrap text."""
    words, line, lines = text.split(), "", []
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    column = layout.column(align=True)
    for number, text_line in enumerate(lines):
        column.label(text=text_line, icon=icon if number == 0 else "BLANK1")


class _FaceForgePanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FaceForge"


class FACEFORGE_PT_main(_FaceForgePanel, bpy.types.Panel):
    bl_label = "Reconstruct Face"

    def draw(self, context):
        layout = self.layout
        props = context.scene.faceforge
        session = operators.SESSION

        layout.row().prop(props, "photo_source", expand=True)
        if props.photo_source == "FILE":
            layout.prop(props, "photo_path", text="")
        elif props.photo_source == "IMAGE":
            layout.template_ID(props, "photo_image", open="image.open")
        else:
            layout.prop(props, "video_path", text="")
            frames = layout.row(align=True)
            frames.prop(props, "video_first_frame", text="First")
            frames.prop(props, "video_last_frame", text="Last")
        if props.photo_source != "VIDEO":
            _more_photos(layout, props)
        row = layout.row(align=True)
        row.prop(props, "face", expand=True)
        if props.face == "INDEX":
            layout.prop(props, "face_index")

        layout.row(align=True).prop(props, "geometry", expand=True)
        model_line = session.model_line()
        if model_line:
            has_head = "head" in session.status.get("geometries", ())
            _wrapped(layout, model_line, "CHECKMARK" if has_head else "ERROR", _chars_per_line(context))
            if not has_head:
                layout.operator("faceforge.model_download", icon="IMPORT")
        column = layout.column(align=True)
        column.use_property_split = True
        column.use_property_decorate = False
        for option in PANEL_OPTIONS:  # the schema's panel options, in its order
            if option.name != "geometry" and applies(option.name, props):
                column.prop(props, option.name)

        line = session.request_line()
        setting_up = draw_setup_progress(layout, _chars_per_line(context))  # Install Server's progress, in view
        if line is not None:
            text, factor = line
            progress_bar(layout, factor, text, _chars_per_line(context))
            layout.operator("faceforge.cancel", icon="CANCEL")
        elif not setting_up:
            photos = 1 + len(props.more_photos)
            text = (f"Reconstruct Head from {photos} Photos" if photos > 1 else "Reconstruct Face")
            layout.operator("faceforge.reconstruct", icon="USER",
                            text="Reconstruct Animated Head" if props.photo_source == "VIDEO" else text)
        level, message = session.message
        if message:
            _wrapped(layout.box(), message, _ICONS.get(level, "INFO"), _chars_per_line(context))


class FACEFORGE_UL_photos(bpy.types.UIList):
    """The other photos of the same person, one file field each."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        if item.image is not None:
            layout.prop(item, "image", text="", emboss=False, icon="IMAGE_DATA")
        else:
            layout.prop(item, "path", text="", emboss=False, icon="FILE_IMAGE")


def _more_photos(layout, props) -> None:
    """Other photos of the same person: a list once there is one, else just the buttons that add them
    (files, or images loaded in Blender)."""
    if not props.more_photos:
        row = layout.row(align=True)
        row.operator("faceforge.photo_add", text="Add Photos of the Same Person", icon="ADD")
        row.operator("faceforge.photo_add_image", text="", icon="IMAGE_DATA")
        return
    layout.label(text=f"Same person: {1 + len(props.more_photos)} photos, one head", icon="USER")
    row = layout.row()
    row.template_list("FACEFORGE_UL_photos", "", props, "more_photos", props, "more_photos_index", rows=2)
    buttons = row.column(align=True)
    buttons.operator("faceforge.photo_add", text="", icon="ADD")
    buttons.operator("faceforge.photo_add_image", text="", icon="IMAGE_DATA")
    buttons.operator("faceforge.photo_remove", text="", icon="REMOVE")


class FACEFORGE_PT_server(_FaceForgePanel, bpy.types.Panel):
    bl_label = "Server"
    bl_parent_id = "FACEFORGE_PT_main"

    def draw_header_preset(self, context):
        connected = operators.SESSION.status is not None
        self.layout.label(text="", icon="LINKED" if connected else "UNLINKED")

    def draw(self, context):
        layout = self.layout
        session = operators.SESSION
        width = _chars_per_line(context)
        if session.server_job is not None or session.stopping is not None:
            icon = "TIME"
        else:
            icon = "CHECKMARK" if session.status is not None else "UNLINKED"
        _wrapped(layout, session.status_line(), icon, width)
        if session.status is None and session.status_error and session.server_job is None:
            _wrapped(layout, session.status_error, "BLANK1", width)
        if session.setup_line() is None and environment.installed() is None and not find_home():
            _wrapped(layout, "No server on this computer yet: Install Server sets one up (a few minutes)", "INFO",
                     width)
            layout.operator("faceforge.server_install", text="Install Server…", icon="IMPORT")
        row = layout.row(align=True)
        row.operator("faceforge.server_start", text="Start", icon="PLAY")
        row.operator("faceforge.server_stop", text="Stop", icon="PAUSE")
        if session.server is not None and session.server.running:
            layout.label(text=f"Local server pid {session.server.pid}", icon="CONSOLE")
        if session.server_log:
            box = layout.box()
            box.label(text="Log (last lines):", icon="TEXT")
            for line in session.server_log.splitlines()[-12:]:
                box.label(text=line[-120:])


def draw_setup_progress(layout, width: int = 48) -> bool:
    """The running Install / Update / Remove / Download's progress and Cancel; False when none runs."""
    line = operators.SESSION.setup_line()
    if line is None:
        return False
    progress_bar(layout, line[1], line[0], width)
    layout.operator("faceforge.setup_cancel", text="Cancel Installation", icon="CANCEL")
    return True


classes = (FACEFORGE_UL_photos, FACEFORGE_PT_main, FACEFORGE_PT_server)
register, unregister = bpy.utils.register_classes_factory(classes)
