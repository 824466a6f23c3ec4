"""Per-scene panel settings (``scene.faceforge``): saved with the .blend, so a file remembers its last request.

The option properties are derived from ``addon.wire.options`` (name, default, range, help); only the
photo and face pickers, which are UI rather than options, are declared here.
"""
import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from ..data.meshdata import BuildSettings
from ..wire import options

_PROPERTY_TYPES = {int: IntProperty, float: FloatProperty, bool: BoolProperty}


def option_property(option: options.Option):
    """A bpy property for one schema option: its default, hard range, slider range and unit."""
    if option.choices and option.kind is str:
        items = tuple((value.upper(), value.replace("_", " ").title(), option.help) for value in option.choices)
        return EnumProperty(name=option.title, description=option.help, items=items, default=option.default.upper())
    if option.kind is str:  # a free name (depth_model): the server checks it
        return StringProperty(name=option.title, description=option.help, default=option.default)
    kwargs = {"name": option.title, "description": option.help, "default": option.default}
    if option.kind in (int, float):
        kwargs.update(min=option.minimum, max=option.maximum)
        if option.soft_maximum is not None:
            kwargs["soft_max"] = option.soft_maximum
    if option.unit == "LENGTH":
        kwargs.update(subtype="DISTANCE", unit="LENGTH", precision=4, step=0.01)
    return _PROPERTY_TYPES[option.kind](**kwargs)


PANEL_OPTIONS = tuple(option for option in options.OPTIONS if option.panel)


# Options that matter only after another choice (which geometry an option changes is the schema's).
AFTER = {"depth_model": lambda s: s.depth_backend == "NETWORK",
         "depth_fuse_weight": lambda s: s.depth_backend in ("NETWORK", "CUES"),
         "photo_lighting": lambda s: s.refine != "OFF",  # the lighting comes from the refinement
         "video_camera": lambda s: s.photo_source == "VIDEO"}


def applies(name: str, settings) -> bool:
    """Whether a panel option can change what the chosen geometry gives (``AUTO``: either). The panel
    shows only these, and a request carries only these: a hidden choice (network depth picked, then
    geometry Head) must not fail a request the user sees nothing wrong with."""
    geometry = options.BY_NAME[name].geometry
    if geometry and settings.geometry not in ("AUTO", geometry.upper()):
        return False
    return name not in AFTER or AFTER[name](settings)


def _wire_value(option: options.Option, value):
    """A panel value as the request sends it: an enum item is its schema choice in upper case."""
    return value.lower() if option.choices and option.kind is str else value


_FACE = options.BY_NAME["face"]


class FACEFORGE_PG_photo(bpy.types.PropertyGroup):
    """Another photo of the same person: head mode fits one head to the photo and all of these."""

    __annotations__ = {"path": StringProperty(name="Photo File", subtype="FILE_PATH",
                                              description="Another photo of the same person (another angle helps)"),
                       "image": PointerProperty(name="Image", type=bpy.types.Image,
                                                description="Another photo of the same person, loaded in Blender")}


class FACEFORGE_PG_settings(bpy.types.PropertyGroup):
    __annotations__ = {
        "photo_source": EnumProperty(
            name="Photo", description="Where the photo comes from",
            items=(("FILE", "File", "A photo on disk", "FILE_IMAGE", 0),
                   ("IMAGE", "Image", "An image already loaded in Blender", "IMAGE_DATA", 1),
                   ("VIDEO", "Video", "A video of one person: one head, animated like the video (head mode)",
                    "FILE_MOVIE", 2)),
            default="FILE"),
        "video_path": StringProperty(name="Video File", subtype="FILE_PATH",
                                     description="A video of one person (MP4, MOV, MKV, WebM, AVI): one head, its "
                                                 "expressions and head motion keyed at the scene's frame rate"),
        "video_first_frame": IntProperty(name="First Frame", default=1, min=1,
                                         description="The video's first frame to use (1: from its start)"),
        "video_last_frame": IntProperty(name="Last Frame", default=0, min=0,
                                        description="The video's last frame to use (0: to its end; the server reads "
                                                    "at most its max_video_frames)"),
        "photo_path": StringProperty(name="Photo File", description="Photo with a face (JPEG, PNG, WebP, BMP, TIFF)",
                                     subtype="FILE_PATH"),
        "photo_image": PointerProperty(name="Image", type=bpy.types.Image,
                                       description="Image datablock to reconstruct from"),
        "face": EnumProperty(
            name="Face", description=_FACE.help,
            items=(("LARGEST", "Largest", "The largest face in the photo"),
                   ("INDEX", "Index", "Face number N, by size (0 = largest)"),
                   ("ALL", "All", "Every face: one object each")),
            default=_FACE.default.upper()),
        "face_index": IntProperty(name="Face Index", description="0 = largest face, 1 = next largest, ...",
                                  default=0, min=0, max=options.MAX_FACE_INDEX),
        "more_photos": CollectionProperty(type=FACEFORGE_PG_photo, name="More Photos",
                                          description="Other photos of the same person: one head fitted to all"),
        "more_photos_index": IntProperty(name="Active Photo", default=0, min=0),
        **{option.name: option_property(option) for option in PANEL_OPTIONS},
    }

    def more_photo_paths(self) -> list[str]:
        """The other photos of the same person that are files, as absolute paths (empty rows left out)."""
        return [bpy.path.abspath(photo.path) for photo in self.more_photos if photo.path and photo.image is None]

    def build_settings(self) -> BuildSettings:
        return BuildSettings(**{o.name: getattr(self, o.name) for o in PANEL_OPTIONS if o.side == options.BUILD})

    def video_frames(self) -> str:
        """The panel's frame range (1-based, both ends included, as Blender counts) as the request's
        ``video_frames`` (0-based START:STOP); '' for the whole video. ValueError for a range that ends first."""
        first, last = self.video_first_frame, self.video_last_frame
        if last and last < first:
            raise ValueError(f"The video's Last Frame ({last}) comes before its First Frame ({first})")
        return "" if first == 1 and not last else f"{first - 1}:{last or ''}"

    def server_options(self) -> dict:
        """The request's options: the face choice plus every panel option the server applies."""
        face = {"LARGEST": "largest", "ALL": "all"}.get(self.face, str(self.face_index))
        chosen = {o.name: _wire_value(o, getattr(self, o.name)) for o in PANEL_OPTIONS
                  if o.side != options.BUILD and applies(o.name, self)}
        frames = self.video_frames() if self.photo_source == "VIDEO" else ""
        if frames:
            chosen["video_frames"] = frames
        return {"face": face, **chosen}


classes = (FACEFORGE_PG_photo, FACEFORGE_PG_settings)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    bpy.types.Scene.faceforge = PointerProperty(type=FACEFORGE_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.faceforge
    _unregister_classes()
