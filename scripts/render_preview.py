"""Render a face from a .blend at front / 45 degrees / profile, textured and as clay, to PNGs.

    blender -b -P scripts/render_preview.py -- FILE.blend [--object NAME] [--output docs/images]
        [--prefix face] [--size 512] [--samples 32] [--modes textured,clay,raw] [--engine CYCLES]

Cycles on the CPU with denoising off (Debian's Blender 3.4 has no OpenImageDenoise); Workbench if
Cycles is unavailable. ``clay`` shows the shape with the add-on's modifiers, ``raw`` the mesh as
the server sent it (modifiers off), which is what to look at for facets, rims and spikes.
Also writes PREFIX_grid.png: rows = modes, columns = views. Works with ``python`` + bpy too.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # Blender's Python knows nothing of this checkout

from addon.batch.cli import script_argv  # noqa: E402
from addon.data.photo import png_bytes  # noqa: E402

VIEWS = {"front": 0.0, "45": 45.0, "profile": 90.0}  # degrees around Z, from the face's front (-Y)


def parse(argv):
    parser = argparse.ArgumentParser(prog="blender -b -P scripts/render_preview.py --")
    parser.add_argument("blend", type=Path)
    parser.add_argument("--object", help="mesh object to render (default: the first mesh)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--prefix", default=None, help="file name prefix (default: the object name)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--modes", default="textured,clay,raw")
    parser.add_argument("--views", default="front,45,profile")
    parser.add_argument("--engine", default="CYCLES", choices=["CYCLES", "BLENDER_WORKBENCH", "BLENDER_EEVEE"])
    return parser.parse_args(script_argv(argv))


def main(argv=None) -> int:
    import bpy

    args = parse(sys.argv if argv is None else argv)
    bpy.ops.wm.open_mainfile(filepath=str(args.blend.resolve()))
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    if not meshes:
        print(f"error: no mesh object in {args.blend}")
        return 1
    target = bpy.data.objects.get(args.object) if args.object else meshes[0]
    if target is None:
        print(f"error: no object {args.object!r}; meshes: {', '.join(o.name for o in meshes)}")
        return 1
    for obj in meshes:
        obj.hide_render = obj is not target
    args.output.mkdir(parents=True, exist_ok=True)
    centre, radius = _bounds(target)
    camera, distance = _stage(bpy.context.scene, centre, radius)
    engine = _engine(bpy.context.scene, args)
    written = _render_views(args, target, camera, centre, distance, engine)
    prefix = args.prefix or target.name
    grid = args.output / f"{prefix}_grid.png"
    modes, views = _contact_sheet(written, args.size, grid)
    print(f"wrote {grid} (rows {', '.join(modes)}; columns {', '.join(views)}; engine {engine})", flush=True)
    return 0


def _bounds(target):
    """Centre and radius of the evaluated (modified) mesh in world space."""
    import bpy
    import numpy as np
    from mathutils import Vector

    evaluated = target.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    coords = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", coords)
    evaluated.to_mesh_clear()
    matrix = np.array(target.matrix_world)
    points = coords.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
    lo, hi = points.min(0), points.max(0)
    return Vector(((lo + hi) / 2).tolist()), float(np.linalg.norm(hi - lo)) / 2


def _stage(scene, centre, radius):
    """Camera (85 mm, framing the bounds), key/fill/rim area lights and a dim grey world."""
    import bpy
    from mathutils import Vector

    from addon.scene.faces import node_tree

    camera_data = bpy.data.cameras.new("PreviewCamera")
    camera_data.lens = 85
    camera = bpy.data.objects.new("PreviewCamera", camera_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    distance = radius / math.tan(camera_data.angle / 2) * 1.08
    scale = max(radius, 0.05) / 0.15
    for name, energy, location, size in (("Key", 6, (-0.35, -0.6, 0.35), 0.4), ("Fill", 2, (0.6, -0.4, 0.0), 0.6),
                                         ("Rim", 3, (0.3, 0.6, 0.4), 0.3)):
        data = bpy.data.lights.new(name, "AREA")
        data.energy, data.size = energy * scale ** 2, size * scale
        obj = bpy.data.objects.new(name, data)
        obj.location = centre + Vector(location) * scale
        obj.rotation_euler = (centre - obj.location).to_track_quat("-Z", "Y").to_euler()
        scene.collection.objects.link(obj)
    world = scene.world or bpy.data.worlds.new("PreviewWorld")
    scene.world = world
    background = node_tree(world).nodes.get("Background")
    if background is not None:
        background.inputs["Color"].default_value = (0.18, 0.19, 0.21, 1.0)
        background.inputs["Strength"].default_value = 0.35
    return camera, distance


def _engine(scene, args) -> str:
    """Cycles on the CPU without denoising (Debian's 3.4 has no OpenImageDenoise); Workbench as a fallback."""
    render = scene.render
    render.resolution_x = render.resolution_y = args.size
    render.resolution_percentage = 100
    render.film_transparent = False
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    try:
        scene.view_settings.view_transform = "Standard"  # the photo's colours, not Filmic/AgX
    except TypeError:
        pass
    engine = args.engine
    try:
        render.engine = engine
    except TypeError:
        engine = "BLENDER_WORKBENCH"
        render.engine = engine
    if engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = args.samples
        scene.cycles.use_denoising = False
        if hasattr(scene.cycles, "use_adaptive_sampling"):
            scene.cycles.use_adaptive_sampling = True
    elif engine == "BLENDER_WORKBENCH":
        scene.display.shading.light = "STUDIO"
        scene.display.shading.color_type = "TEXTURE"
    return engine


def _clay():
    import bpy

    from addon.scene.faces import node_tree

    clay = bpy.data.materials.new("PreviewClay")
    bsdf = next(n for n in node_tree(clay).nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (0.62, 0.6, 0.57, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.6
    clay.diffuse_color = (0.62, 0.6, 0.57, 1.0)
    return clay


def _render_views(args, target, camera, centre, distance, engine) -> dict:
    """One PNG per (mode, view): textured, clay (with the modifiers), raw (modifiers off)."""
    import bpy
    from mathutils import Vector

    scene, clay = bpy.context.scene, _clay()
    prefix = args.prefix or target.name
    modifier_state = {m.name: (m.show_render, m.show_viewport) for m in target.modifiers}
    written = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        bpy.context.view_layer.material_override = None if mode == "textured" else clay
        if engine == "BLENDER_WORKBENCH":
            scene.display.shading.color_type = "TEXTURE" if mode == "textured" else "SINGLE"
        for modifier in target.modifiers:
            on = modifier_state[modifier.name][0] if mode != "raw" else False
            modifier.show_render = modifier.show_viewport = on
        for view in [v.strip() for v in args.views.split(",") if v.strip()]:
            angle = math.radians(VIEWS[view])
            camera.location = centre + Vector((distance * math.sin(angle), -distance * math.cos(angle), 0.0))
            camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
            path = args.output / f"{prefix}_{mode}_{view}.png"
            scene.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            written[(mode, view)] = path
            print(f"wrote {path}", flush=True)
    for modifier in target.modifiers:
        modifier.show_render, modifier.show_viewport = modifier_state[modifier.name]
    return written


def _contact_sheet(written: dict, size: int, path) -> tuple:
    """The renders in one PNG: rows = modes, columns = views. Returns (modes, views)."""
    import bpy
    import numpy as np

    modes = list(dict.fromkeys(m for m, _ in written))
    views = list(dict.fromkeys(v for _, v in written))
    sheet = np.zeros((len(modes) * size, len(views) * size, 3), dtype=np.uint8)
    for (mode, view), image_path in written.items():
        image = bpy.data.images.load(str(image_path))
        pixels = np.empty(image.size[0] * image.size[1] * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        rgb = (pixels.reshape(image.size[1], image.size[0], 4)[::-1, :, :3] * 255 + 0.5).clip(0, 255).astype(np.uint8)
        r, c = modes.index(mode), views.index(view)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = rgb[:size, :size]
        bpy.data.images.remove(image)
    path.write_bytes(png_bytes(sheet))
    return modes, views


if __name__ == "__main__":
    sys.exit(main())
