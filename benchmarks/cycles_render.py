"""Render evaluation heads with Blender's Cycles (bpy as a module), so the cues network is scored
on images no renderer of ours made: path-traced area light and sky, Principled BSDF with
specular and subsurface, soft shadows, Filmic-free standard view.

    .venv/bin/python benchmarks/cycles_render.py SCENES.npz OUT_DIR [--samples 24]

``SCENES.npz`` (written by ``head_fit_eval.py``): ``faces`` (F, 3), ``colours`` (V, 3) sRGB, and per
scene ``vertices_K`` (V, 3) in the OpenCV camera frame (metres), with ``focal``, ``size`` shared.
Writes ``OUT_DIR/scene_K.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def build_scene(faces: np.ndarray, colours: np.ndarray, focal: float, size: int, samples: int):
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = True
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.image_settings.file_format = "PNG"
    scene.view_settings.view_transform = "Standard"
    camera_data = bpy.data.cameras.new("camera")
    camera_data.sensor_fit = "HORIZONTAL"
    camera_data.sensor_width = 36.0
    camera_data.lens = focal * 36.0 / size
    camera = bpy.data.objects.new("camera", camera_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    light_data = bpy.data.lights.new("key", "AREA")
    light_data.energy, light_data.size = 60.0, 0.4
    light = bpy.data.objects.new("key", light_data)
    light.location = (0.5, 0.6, 0.2)
    light.rotation_euler = (np.radians(-40), np.radians(30), 0)
    scene.collection.objects.link(light)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.35, 0.37, 0.42, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.7
    scene.world = world
    mesh = bpy.data.meshes.new("head")
    count = len(colours)
    mesh.vertices.add(count)
    mesh.loops.add(faces.size)
    mesh.polygons.add(len(faces))
    mesh.loops.foreach_set("vertex_index", faces.reshape(-1).astype(np.int32))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    attribute = mesh.color_attributes.new("albedo", "FLOAT_COLOR", "POINT")
    linear = np.clip(colours, 0, 1) ** 2.2
    attribute.data.foreach_set("color", np.column_stack([linear, np.ones(count)]).astype(np.float32).reshape(-1))
    material = bpy.data.materials.new("skin")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = nodes["Principled BSDF"]
    colour = nodes.new("ShaderNodeVertexColor")
    colour.layer_name = "albedo"
    material.node_tree.links.new(colour.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.45
    bsdf.inputs["Subsurface Weight"].default_value = 0.15
    bsdf.inputs["Subsurface Radius"].default_value = (0.004, 0.002, 0.001)
    mesh.materials.append(material)
    mesh.shade_smooth()
    head = bpy.data.objects.new("head", mesh)
    scene.collection.objects.link(head)
    return scene, mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenes", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--samples", type=int, default=24)
    args = parser.parse_args()
    import bpy

    data = np.load(args.scenes)
    size = int(data["size"])
    scene, mesh = build_scene(data["faces"], data["colours"], float(data["focal"]), size, args.samples)
    args.out.mkdir(parents=True, exist_ok=True)
    keys = sorted((k for k in data.files if k.startswith("vertices_")), key=lambda k: int(k.split("_")[1]))
    for key in keys:
        opencv = data[key].astype(np.float64)
        blender = opencv * np.array([1.0, -1.0, -1.0])          # camera looks down -Z, +Y up
        mesh.vertices.foreach_set("co", blender.astype(np.float32).reshape(-1))
        mesh.update()
        scene.render.filepath = str(args.out / f"scene_{key.split('_')[1]}.png")
        bpy.ops.render.render(write_still=True)
        print(f"rendered {scene.render.filepath}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
