"""The Blender side of the headless batch: an empty scene per photo, the .blend saved, and
version-guarded exporters for glb / obj / ply / stl. Objects are built by the add-on itself
(``addon.scene.build.build_reconstruction``, see ``writer``). ``bpy`` is imported lazily so ``--help``
works anywhere."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

STL_THICKNESS_M = 0.003  # the STL is closed (solidified) so it can be printed
STL_SCALE = 1000.0  # STL has no units; slicers read millimetres


@contextlib.contextmanager
def blender_chatter_to_stderr(enabled: bool = True):
    """Send what Blender and its exporters print (C and Python) to stderr, so stdout carries only
    the batch's own lines: one per photo."""
    if not enabled:
        yield
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        flush_c = lambda: libc.fflush(None)  # noqa: E731
    except (OSError, AttributeError):
        flush_c = lambda: None  # noqa: E731
    sys.stdout.flush()
    flush_c()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        flush_c()
        os.dup2(saved, 1)
        os.close(saved)


class Blender:
    """Scene reset, saving and version-guarded exports."""

    def __init__(self):
        import bpy

        self.bpy = bpy
        self.version = tuple(bpy.app.version)
        # An empty scene: no default cube, camera or light in the outputs.
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self.exporters = {}

    # -- isolation ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Remove everything a previous photo created, so files contain only this photo's faces."""
        data = self.bpy.data
        for collection in (data.objects, data.meshes, data.materials, data.textures, data.images,
                           data.node_groups, data.collections):
            ids = list(collection)
            if ids:
                data.batch_remove(ids)
        for scene in data.scenes:
            for child in list(scene.collection.children):
                scene.collection.children.unlink(child)

    # -- files -------------------------------------------------------------------------------
    def save_blend(self, path: Path) -> None:
        self.bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True, compress=True)

    def use_texture_files(self, objects, textures: dict) -> None:
        """Point each material's image node at the PNG written next to the exports (after the
        .blend was saved with packed images), so OBJ's MTL names the file and glTF embeds it."""
        from ..scene import faces

        for obj in objects:
            path = textures.get(obj.name)
            if path is None:
                continue
            image = self.bpy.data.images.load(str(path), check_existing=False)
            image.name = path.stem
            for node in list(faces.image_nodes(obj)):
                node.image = image

    def exporter(self, fmt: str):
        """``(operator, kwargs)`` for a format, chosen by Blender version (names changed in 3.6/4.x)."""
        if fmt in self.exporters:
            return self.exporters[fmt]
        v = self.version
        candidates = {
            "fbx": [("export_scene.fbx", "io_scene_fbx",
                     dict(use_selection=True, object_types={"MESH"}, use_mesh_modifiers=True, path_mode="COPY",
                          embed_textures=True, bake_anim=False, add_leaf_bones=False, axis_forward="-Z",
                          axis_up="Y"))],
            # OBJ: the C++ wm.obj_export (since 3.1; 20x faster than the io_scene_obj add-on it replaced in 4.0).
            "obj": [("wm.obj_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, export_uv=True, export_normals=True,
                          export_materials=True, path_mode="STRIP", forward_axis="NEGATIVE_Z", up_axis="Y"))],
            # PLY: wm.ply_export since 3.6 (io_mesh_ply removed in 4.0).
            "ply": [("wm.ply_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, export_uv=True, export_normals=True))]
                   if v >= (3, 6, 0) else
                   [("export_mesh.ply", "io_mesh_ply",
                     dict(use_selection=True, use_mesh_modifiers=True, use_uv_coords=True, use_normals=True,
                          use_colors=False))],
            # STL: wm.stl_export since 4.1 (io_mesh_stl removed in 4.2). Millimetres for slicers.
            "stl": [("wm.stl_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, global_scale=STL_SCALE, ascii_format=False))]
                   if v >= (4, 1, 0) else
                   [("export_mesh.stl", "io_mesh_stl",
                     dict(use_selection=True, use_mesh_modifiers=True, global_scale=STL_SCALE, ascii=False,
                          batch_mode="OFF"))],
        }[fmt]
        from ..scene import faces

        for idname, addon, kwargs in candidates:
            op = faces.find_operator(idname, addon)
            if op is not None:
                self.exporters[fmt] = (idname, op, kwargs)
                return self.exporters[fmt]
        raise RuntimeError(f"Blender {'.'.join(map(str, v))} has no exporter for {fmt} "
                           f"(tried {', '.join(c[0] for c in candidates)})")

    def export(self, fmt: str, path: Path, objects) -> None:
        heads = any(obj.data.shape_keys is not None for obj in objects)
        if fmt == "glb":  # written by ``glb`` (it says why not Blender's exporter)
            from ..writers import glb, surfaces

            # Heads: the unmodified mesh under its morph targets; faces: the evaluated mesh.
            glb.write_glb(path, surfaces.with_shape_keys(objects) if heads else surfaces.evaluated(objects))
            return
        if fmt in ("fbx", "obj") and heads:  # blendshapes need the unmodified mesh (head_export says why)
            from ..writers import head_export

            getattr(head_export, f"export_{fmt}")(objects, path)
            return
        idname, op, kwargs = self.exporter(fmt)
        from ..scene import faces

        faces.select_only(objects)
        extra = []
        if fmt == "stl":  # printable: a closed shell, thickened backwards (the face looks toward -Y)
            for obj in objects:
                mod = obj.modifiers.new("FaceForge print shell", "SOLIDIFY")
                mod.thickness = STL_THICKNESS_M
                mod.offset = 1.0 if self._normals_face_back(obj) else -1.0
                mod.use_rim = True
                mod.use_even_offset = True
                extra.append((obj, mod))
        try:
            result = op(filepath=str(path), **kwargs)
        finally:
            for obj, mod in extra:
                obj.modifiers.remove(mod)
        if "FINISHED" not in result or not path.exists():
            raise RuntimeError(f"{idname} did not write {path.name} (result {sorted(result)})")

    @staticmethod
    def _normals_face_back(obj) -> bool:
        """Solidify thickens against the normals with offset -1; we want the shell behind the face."""
        mesh = obj.data
        if not len(mesh.polygons):
            return False
        total = 0.0
        for poly in mesh.polygons[: min(len(mesh.polygons), 2000)]:
            total += poly.normal.y
        return total > 0  # normals point +Y (away from the viewer): thicken along them
