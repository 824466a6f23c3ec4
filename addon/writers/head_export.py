"""Head objects -> interchange files through Blender's exporters: FBX with blendshapes, and OBJ +
MTL + PNG of the posed head (Blender 3.4 through 5.0). The head's glb, with a morph target per
expression, is written by ``glb`` from ``surfaces.with_shape_keys``.

FBX carries the mesh as the server sent it (the neutral head, one blendshape per expression, the
fitted weights, the pose as the node transform): applying the modifier stack would change the
vertex count under the shape keys, which the format forbids. OBJ has no shape keys, so it gets what
the viewport shows: expression, pose and modifiers applied.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import bpy

from ..scene import faces


def _run(idname: str, addon: str | None, path: Path, **kwargs) -> None:
    """Call an exporter, enabling its bundled add-on if the user turned it off. Every argument
    used here exists under the same name in 3.4, 4.2 and 5.0 (checked against their RNA)."""
    op = faces.find_operator(idname, addon)
    if op is None:
        raise RuntimeError(f"this Blender has no {idname} exporter")
    result = op(filepath=str(path), **kwargs)
    if "FINISHED" not in result or not path.exists():
        raise RuntimeError(f"{idname} did not write {path.name} (result {sorted(result)})")


@contextlib.contextmanager
def textures_as_files(objects, folder: Path, stem: str):
    """Write each object's atlas as ``stem.png`` (``stem_<object>.png`` for several) and point its
    materials at that file while exporting, so MTL and FBX name a real file; restored afterwards.
    An atlas that already is a file in ``folder`` (the batch writes its textures first) is used as
    it is, not written a second time under another name."""
    swaps, written = [], []
    try:
        for obj in objects:
            atlas = faces.texture_of(obj)
            on_disk = Path(bpy.path.abspath(atlas.filepath_raw)) if atlas.packed_file is None else None
            if on_disk is not None and on_disk.is_file() and on_disk.parent.resolve() == Path(folder).resolve():
                written.append(on_disk)
                continue
            path = folder / (f"{stem}.png" if len(objects) == 1 else f"{stem}_{obj.name}.png")
            path.write_bytes(faces.png_of(atlas))
            written.append(path)
            on_disk = bpy.data.images.load(str(path), check_existing=False)
            for node in faces.image_nodes(obj):
                if node.image == atlas:
                    swaps.append((node, atlas))
                    node.image = on_disk
        yield written
    finally:
        loaded = {node.image for node, _ in swaps}
        for node, atlas in swaps:
            node.image = atlas
        for image in loaded:
            bpy.data.images.remove(image)


def _animated(objects) -> bool:
    """Whether any object (a video's head) or its shape keys carry keyframes."""
    keys = (getattr(obj.data, "shape_keys", None) for obj in objects)
    return any(obj.animation_data and obj.animation_data.action for obj in objects) or any(
        key is not None and key.animation_data and key.animation_data.action for key in keys)


@contextlib.contextmanager
def _modifiers_off(objects):
    """Modifiers hidden while the FBX exporter bakes an animation: it writes the unmodified mesh anyway
    (``use_mesh_modifiers=False``) but evaluates the scene at every frame, and the subdivided, displaced
    head made that most of a second per frame."""
    shown = [(modifier, modifier.show_viewport) for obj in objects for modifier in obj.modifiers]
    for modifier, _ in shown:
        modifier.show_viewport = False
    try:
        yield
    finally:
        for modifier, visible in shown:
            modifier.show_viewport = visible


def export_fbx(objects, path: Path) -> None:
    """FBX with blendshapes (one per shape key) and the atlas embedded; Y up, -Z forward. A video's head
    carries its animation: blendshape weights and transform, baked on every scene frame as keyed."""
    path = Path(path)
    faces.select_only(objects)
    animated = _animated(objects)
    with tempfile.TemporaryDirectory() as folder, textures_as_files(objects, Path(folder), path.stem), \
            _modifiers_off(objects if animated else []):
        _run("export_scene.fbx", "io_scene_fbx", path, use_selection=True, object_types={"MESH"},
             use_mesh_modifiers=False, mesh_smooth_type="FACE", path_mode="COPY", embed_textures=True,
             bake_anim=animated, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
             bake_anim_simplify_factor=0.0, add_leaf_bones=False, use_custom_props=False,
             axis_forward="-Z", axis_up="Y")


def export_obj(objects, path: Path) -> list:
    """OBJ + MTL + PNG of the posed head as the viewport shows it (expression, pose, modifiers);
    returns the files written."""
    path = Path(path)
    faces.select_only(objects)
    with textures_as_files(objects, path.parent, path.stem) as textures:
        _run("wm.obj_export", None, path, export_selected_objects=True, apply_modifiers=True, export_uv=True,
             export_normals=True, export_materials=True, export_triangulated_mesh=False, path_mode="STRIP",
             forward_axis="NEGATIVE_Z", up_axis="Y")
    return [path, path.with_suffix(".mtl"), *textures]
