"""Per-scene panel settings (``scene.faceforge``): saved with the .blend, so a file remembers its last request."""
import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .scene import BuildSettings

_DEFAULTS = BuildSettings()


class FACEFORGE_PG_settings(bpy.types.PropertyGroup):
    photo_source: EnumProperty(
        name="Photo", description="Where the photo comes from",
        items=(("FILE", "File", "A photo on disk", "FILE_IMAGE", 0),
               ("IMAGE", "Image", "An image already loaded in Blender", "IMAGE_DATA", 1)),
        default="FILE")
    photo_path: StringProperty(name="Photo File", description="Photo with a face (JPEG, PNG, WebP, BMP, TIFF)",
                               subtype="FILE_PATH")
    photo_image: PointerProperty(name="Image", type=bpy.types.Image, description="Image datablock to reconstruct from")
    face: EnumProperty(
        name="Face", description="Which detected face to reconstruct",
        items=(("LARGEST", "Largest", "The largest face in the photo"),
               ("INDEX", "Index", "Face number N, by size (0 = largest)"),
               ("ALL", "All", "Every face: one object each")),
        default="LARGEST")
    face_index: IntProperty(name="Face Index", description="0 = largest face, 1 = next largest, ...", default=0, min=0)
    resolution: IntProperty(name="Resolution", description="Mesh grid cells across the face width "
                            "(100 gives about 9k vertices)", default=100, min=8, max=1000, soft_max=300)
    smooth_iterations: IntProperty(name="Smoothing", description="Laplacian smoothing iterations (0 = off)",
                                   default=_DEFAULTS.smooth_iterations, min=0, max=200, soft_max=50)
    smooth_factor: FloatProperty(name="Smoothing Factor", description="Laplacian smoothing strength per iteration",
                                 default=_DEFAULTS.smooth_factor, min=0.0, soft_max=2.0)
    subdivision_levels: IntProperty(name="Subdivisions", description="Subdivision Surface levels before displacement",
                                    default=_DEFAULTS.subdivision_levels, min=0, max=6, soft_max=3)
    detail_strength: FloatProperty(name="Detail Strength", description="Displacement in metres per unit of the "
                                   "detail map (skin texture relief)", default=_DEFAULTS.detail_strength,
                                   min=-0.05, max=0.05, precision=4, step=0.01, subtype="DISTANCE", unit="LENGTH")

    def build_settings(self) -> BuildSettings:
        return BuildSettings(smooth_iterations=self.smooth_iterations, smooth_factor=self.smooth_factor,
                             subdivision_levels=self.subdivision_levels, detail_strength=self.detail_strength)

    def server_options(self) -> dict:
        face = {"LARGEST": "largest", "ALL": "all"}.get(self.face, str(self.face_index))
        return {"face": face, "resolution": self.resolution}


classes = (FACEFORGE_PG_settings,)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    bpy.types.Scene.faceforge = PointerProperty(type=FACEFORGE_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.faceforge
    _unregister_classes()
