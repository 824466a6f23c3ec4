"""Look at head textures: held-out-style photos reconstructed in head mode, rendered textured.

    .venv/bin/python benchmarks/texture_views.py OUT.png [--options JSON ...] [--size 256]

Photos: the astronaut as photographed, lit from one side (her far cheek 30x darker than the near
one), and with a skin-toned hand over her chin and a dark fringe over her forehead painted in. Each photo is
reconstructed in-process (``FacePipeline``) once per ``--options`` (default: ``{"refine": "off"}``
and ``{}``, the defaults), and the canonical head (pose removed) is rendered with bpy's Cycles at
front / 45 deg / profile, its texture as flat emission (what the texture holds, no light of ours);
rows are photo x options, the photo itself at the left of each row. Needs the shared ICT-FaceKit npz.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def render_views(face, size: int) -> np.ndarray:
    """Front / 45 deg / profile of the canonical head, texture as emission, (size, 3*size, 3) uint8."""
    import bpy
    from PIL import Image

    from addon.scene import faces, heads

    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = heads.build_head_object(face, name="head", settings=faces.BuildSettings(smooth_iterations=0,
                                                                                        subdivision_levels=0,
                                                                                        detail_strength=0.0))
    obj.matrix_world = np.eye(4).tolist()  # canonical: the face toward -Y
    for key in obj.data.shape_keys.key_blocks[1:]:
        key.mute = True
    for slot in obj.material_slots:
        tree = slot.material.node_tree
        bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")
        image = bsdf.inputs["Base Color"].links[0].from_node
        emission = tree.nodes.new("ShaderNodeEmission")
        tree.links.new(image.outputs["Color"], emission.inputs["Color"])
        output = next(n for n in tree.nodes if n.type == "OUTPUT_MATERIAL")
        tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    render = bpy.context.scene
    render.render.engine = "CYCLES"
    render.cycles.samples = 4
    render.cycles.use_denoising = False
    render.render.resolution_x = render.render.resolution_y = size
    render.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("grey")
    world.color = (0.2, 0.2, 0.22)
    render.world = world
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    camera.data.lens = 120
    render.collection.objects.link(camera)
    render.camera = camera
    centre = np.asarray(obj.data.vertices[3000].co) * [0, 1, 1]  # on the face, mid-height
    views = []
    with tempfile.TemporaryDirectory() as folder:
        for yaw in (0.0, 45.0, 90.0):
            a = math.radians(yaw)
            direction = np.array([-math.sin(a), -math.cos(a), 0.0])
            camera.location = (centre + 1.0 * direction).tolist()
            camera.rotation_euler = (math.pi / 2, 0.0, -a)
            render.render.filepath = str(Path(folder) / f"{yaw:.0f}.png")
            bpy.ops.render.render(write_still=True)
            views.append(np.asarray(Image.open(render.render.filepath).convert("RGB")))
    return np.concatenate(views, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--options", action="append", type=json.loads)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    import torch
    from PIL import Image
    from skimage import data

    from addon.wire.client import FaceData
    from benchmarks.head_fit_eval import shared_model_path
    from inference_server.pipeline import FacePipeline
    from tests.conftest import _png
    from tests.held_out_photos import occluded, side_lit

    torch.set_num_threads(2)
    pipeline = FacePipeline(torch.device("cpu"), head_model=shared_model_path())
    astronaut = data.astronaut()

    marks = pipeline.reconstruct(_png(astronaut), {"geometry": "face", "resolution": 30}).faces[0]
    landmarks = marks.arrays["landmarks_image"]
    photos = {"as photographed": astronaut, "side-lit": side_lit(astronaut, landmarks),
              "hand and fringe": occluded(astronaut, landmarks)}
    rows = []
    for name, rgb in photos.items():
        for options in args.options or [{"refine": "off"}, {}]:
            result = pipeline.reconstruct(_png(rgb), {"geometry": "head", **options})
            face = result.faces[0]
            whole = FaceData(face.index, face.meta, pipeline.whole_arrays(face))
            views = render_views(whole, args.size)
            photo = np.asarray(Image.fromarray(rgb).resize((args.size, args.size)))
            rows.append(np.concatenate([photo, views], 1))
            print(f"{name} {json.dumps(options)}: done", flush=True)
    Image.fromarray(np.concatenate(rows, 0)).save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
