"""Head mode inside Blender (bpy 5.0 module, and Debian's Blender 3.4 as a subprocess): the object
built from a head reply, its .blend round trip, and its glb / FBX / OBJ exports.

The reply is made from the ICT model by tests/head_fixtures.py (no server, no fit), with a known
identity, expression weights and pose, so every number the object carries can be checked.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.addon_fixtures import bpy_module, pixels_of  # noqa: F401 (fixture)
from tests.head_fixtures import head_reply_from_model, model_path, pose_matrix  # noqa: F401 (fixture)

POSE = pose_matrix(25.0, (0.05, -0.02, 1.6))
WEIGHTS = {"jawOpen": 0.5, "mouthSmile_L": 0.3, "eyeBlink_R": 1.0}


@pytest.fixture(scope="module")
def head_reply(model_path):
    from inference_server.head.model import HeadModel

    names = HeadModel.load(model_path).exp_names
    weights = np.zeros(len(names), np.float32)
    for name, value in WEIGHTS.items():
        weights[names.index(name)] = value
    identity = np.random.default_rng(7).normal(size=100).astype(np.float32)
    return head_reply_from_model(model_path, identity, weights, pose=POSE, texture_size=128)


@pytest.fixture
def bpy(bpy_module):
    bpy_module.ops.wm.read_homefile(use_empty=True)
    return bpy_module


def _build(head_reply, **settings):
    from addon.scene import faces, heads

    return heads.build_head_object(head_reply, name="head", settings=faces.BuildSettings(**settings),
                                        metadata={"source_photo": "/photos/head.png"})


def _shape_key_mix(bpy, obj) -> np.ndarray:
    """Object-space vertices after shape keys, before the modifier stack."""
    for modifier in obj.modifiers:
        modifier.show_viewport = False
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    co = np.empty(len(evaluated.data.vertices) * 3, np.float32)
    evaluated.data.vertices.foreach_get("co", co)
    for modifier in obj.modifiers:
        modifier.show_viewport = True
    return co.reshape(-1, 3)


def _glb_json(path: Path) -> dict:
    """The JSON chunk of a binary glTF (header: magic, version, length; then chunk length + type)."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data)
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert magic == b"glTF" and version == 2 and kind == b"JSON"
    return json.loads(data[20:20 + length])


def test_mesh_keeps_the_model_topology(bpy, head_reply):
    obj = _build(head_reply)
    mesh, arrays = obj.data, head_reply.arrays
    assert len(mesh.vertices) == len(arrays["vertices"]) == 24591
    sizes = np.empty(len(mesh.polygons), np.int32)
    mesh.polygons.foreach_get("loop_total", sizes)
    np.testing.assert_array_equal(sizes, arrays["polygon_sizes"])
    assert (sizes == 4).sum() == (arrays["polygon_sizes"] == 4).sum() > 24000
    corners = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", corners)
    np.testing.assert_array_equal(corners, arrays["polygon_vertices"])
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), arrays["vertices"])
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), arrays["corner_uvs"], atol=1e-6)
    assert 0.0 <= uv.min() and uv.max() <= 1.0
    smooth = np.empty(len(mesh.polygons), bool)
    mesh.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()
    colours = np.empty(len(mesh.vertices) * 4, np.float32)  # the refinement's lighting per vertex
    mesh.color_attributes["photo_irradiance"].data.foreach_get("color", colours)
    np.testing.assert_allclose(colours.reshape(-1, 4)[:, :3], arrays["vertex_irradiance"].astype(np.float32), atol=1e-6)


def test_a_material_per_part_reading_one_packed_atlas(bpy, head_reply):
    obj = _build(head_reply)
    parts = head_reply.meta["materials"]
    assert [slot.material.name for slot in obj.material_slots] == [f"head_{part}" for part in parts]
    slots = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", slots)
    np.testing.assert_array_equal(slots, head_reply.arrays["polygon_material"])
    images, roughness = set(), {}
    for slot in obj.material_slots:
        bsdf = next(n for n in slot.material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        images.add(bsdf.inputs["Base Color"].links[0].from_node.image.name)
        roughness[slot.material.name] = bsdf.inputs["Roughness"].default_value
    assert images == {"head_texture"} and bpy.data.images["head_texture"].packed_file is not None
    assert roughness["head_eyes_sclera"] < 0.2 < roughness["head_skin"]  # wet eyes, matte skin
    texture = head_reply.arrays["texture"]
    np.testing.assert_allclose(pixels_of(bpy.data.images["head_texture"])[::-1, :, :3], texture / 255, atol=1 / 255)


def test_expressions_are_shape_keys_and_zero_leaves_the_neutral_head(bpy, head_reply):
    from addon.scene import heads

    obj = _build(head_reply)
    arrays, names = head_reply.arrays, head_reply.meta["expressions"]
    blocks = obj.data.shape_keys.key_blocks
    assert [key.name for key in blocks] == ["Basis", *names] and len(names) == 53
    np.testing.assert_allclose([key.value for key in blocks[1:]], arrays["expression_weights"], atol=1e-6)
    expected = arrays["vertices"] + np.tensordot(arrays["expression_weights"], arrays["expression_deltas"], 1)
    fitted = _shape_key_mix(bpy, obj)
    np.testing.assert_allclose(fitted, expected, atol=1e-6)
    assert np.abs(fitted - arrays["vertices"]).max() > 0.005  # the open jaw moved the chin by millimetres

    heads.show_neutral(obj, True)  # the panel's "neutral expression": weights kept, keys muted
    np.testing.assert_allclose(_shape_key_mix(bpy, obj), arrays["vertices"], atol=1e-7)
    assert blocks["jawOpen"].value == pytest.approx(WEIGHTS["jawOpen"])
    heads.show_neutral(obj, False)
    for key in blocks[1:]:
        key.value = 0.0
    np.testing.assert_allclose(_shape_key_mix(bpy, obj), arrays["vertices"], atol=1e-7)


def test_pose_is_the_object_transform_and_the_stack_is_face_mode_s(bpy, head_reply):
    obj = _build(head_reply, subdivision_levels=2)
    np.testing.assert_allclose(np.array(obj.matrix_world), POSE, atol=1e-6)
    assert [m.type for m in obj.modifiers] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    assert obj.modifiers["Subdivision"].levels == 2 and obj.modifiers["Detail"].uv_layer == "UVMap"
    meta = obj["faceforge"].to_dict()
    assert meta["source_photo"] == "/photos/head.png" and meta["face"]["geometry"] == "head"
    assert meta["face"]["expressions"] == head_reply.meta["expressions"]
    np.testing.assert_allclose(meta["face"]["pose"]["matrix"], POSE)
    assert obj["faceforge_depth"].packed_file is not None


def test_bad_reply_raises_and_leaves_the_file_untouched(bpy, head_reply):
    from addon.scene import faces, heads

    arrays = dict(head_reply.arrays, polygon_vertices=head_reply.arrays["polygon_vertices"] + 1)
    bad = type(head_reply)(index=0, meta=head_reply.meta, arrays=arrays)
    with pytest.raises(ValueError, match="polygon_vertices"):
        heads.build_head_object(bad, name="bad", settings=faces.BuildSettings())
    lighting = np.full_like(head_reply.arrays["vertex_irradiance"], np.nan)
    bad = type(head_reply)(index=0, meta=head_reply.meta, arrays=dict(head_reply.arrays, vertex_irradiance=lighting))
    with pytest.raises(ValueError, match="vertex_irradiance"):
        heads.build_head_object(bad, name="bad", settings=faces.BuildSettings())
    assert not bpy.data.objects and not bpy.data.meshes and not bpy.data.images


def test_blend_round_trip_keeps_shape_keys_and_texture(bpy, head_reply, tmp_path):
    _build(head_reply)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "head.blend"))
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "head.blend"))
    obj = bpy.data.objects["head"]
    blocks = obj.data.shape_keys.key_blocks
    assert len(blocks) == 54 and blocks["eyeBlink_R"].value == pytest.approx(1.0)
    image = bpy.data.images["head_texture"]
    assert image.packed_file is not None
    np.testing.assert_allclose(pixels_of(image)[::-1, :, :3], head_reply.arrays["texture"] / 255, atol=1 / 255)
    np.testing.assert_allclose(np.array(obj.matrix_world), POSE, atol=1e-6)


def _world_set(obj, mesh) -> np.ndarray:
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    matrix = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def _same_points(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    from scipy.spatial import cKDTree

    return cKDTree(a).query(b)[0].max() < tolerance and cKDTree(b).query(a)[0].max() < tolerance


def test_glb_has_a_morph_target_per_expression_like_blenders_own_export(bpy, head_reply, tmp_path):
    """The batch writes a head's glb itself (``glb`` + ``surfaces.with_shape_keys``): the neutral
    mesh, a morph target per expression with the fitted weights, the pose as the node transform;
    Blender's exporter agrees on all of it and its importer gets the shape keys back."""
    from addon.writers import glb, surfaces

    obj = _build(head_reply)
    glb.write_glb(tmp_path / "head.glb", surfaces.with_shape_keys([obj]))
    ours, _ = glb.read_glb(tmp_path / "head.glb")
    (mesh,) = ours["meshes"]
    names = head_reply.meta["expressions"]
    assert mesh["extras"]["targetNames"] == names
    assert len(mesh["primitives"]) == len(head_reply.meta["materials"])  # a primitive per material
    assert all(len(primitive["targets"]) == 53 for primitive in mesh["primitives"])
    np.testing.assert_allclose(mesh["weights"], head_reply.arrays["expression_weights"], atol=1e-6)
    (node,) = ours["nodes"]
    assert node["translation"] == pytest.approx([0.05, 1.6, 0.02], abs=1e-6)  # Blender (x, y, z) -> glTF (x, z, -y)
    assert ours["images"][0]["mimeType"] == "image/png"

    obj.select_set(True)
    bpy.ops.export_scene.gltf(filepath=str(tmp_path / "blender.glb"), export_format="GLB", use_selection=True,
                              export_apply=False, export_morph=True, export_morph_normal=False)
    theirs, _ = glb.read_glb(tmp_path / "blender.glb")
    # Sparse targets, as Blender's: dense ones would make the file twice the size.
    assert (tmp_path / "head.glb").stat().st_size < 1.05 * (tmp_path / "blender.glb").stat().st_size
    assert theirs["meshes"][0]["extras"] == mesh["extras"] and theirs["meshes"][0]["weights"] == mesh["weights"]
    def looks(materials):  # Blender's exporter gives each material its own texture entry for the one atlas
        return [{**m, "pbrMetallicRoughness": {k: v for k, v in m["pbrMetallicRoughness"].items()
                                               if k != "baseColorTexture"}} for m in materials]

    assert looks(ours["materials"]) == looks(theirs["materials"]) and len(ours["textures"]) == 1
    assert node["rotation"] == pytest.approx(theirs["nodes"][0]["rotation"], abs=1e-6)

    posed = _world_set(obj, obj.data)  # the neutral head, posed
    mixed = obj.matrix_world.copy()
    expected_mix = _shape_key_mix(bpy, obj) @ np.array(mixed)[:3, :3].T + np.array(mixed)[:3, 3]
    bpy.ops.object.select_all(action="DESELECT")
    bpy.ops.import_scene.gltf(filepath=str(tmp_path / "head.glb"))
    (imported,) = bpy.context.selected_objects
    keys = imported.data.shape_keys.key_blocks
    assert [key.name for key in keys[1:]] == names
    assert keys["jawOpen"].value == pytest.approx(WEIGHTS["jawOpen"], abs=1e-6)
    for key in keys[1:]:  # the neutral head first, then the fitted mix
        key.value = 0.0
    assert _same_points(_world_set(imported, imported.data), posed, 1e-5)
    for key, weight in zip(keys[1:], mesh["weights"]):
        key.value = weight
    shown = imported.evaluated_get(bpy.context.evaluated_depsgraph_get())
    assert _same_points(_world_set(imported, shown.data), expected_mix, 1e-5)


def test_fbx_blendshapes_import_back_as_shape_keys(bpy, head_reply, tmp_path):
    from addon.writers import head_export

    obj = _build(head_reply)
    head_export.export_fbx([obj], tmp_path / "head.fbx")
    assert [p.name for p in tmp_path.iterdir()] == ["head.fbx"]  # the atlas travels inside
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(tmp_path / "head.fbx"))
    (imported,) = [o for o in bpy.data.objects if o.type == "MESH"]
    blocks = imported.data.shape_keys.key_blocks
    assert [key.name for key in blocks[1:]] == head_reply.meta["expressions"]
    assert blocks["jawOpen"].value == pytest.approx(WEIGHTS["jawOpen"], abs=1e-3)
    assert len(imported.data.vertices) == 24591 and len(imported.material_slots) == 7
    np.testing.assert_allclose(np.array(imported.matrix_world), POSE, atol=1e-5)  # the pose survives the axis swap
    assert any(image.size[0] == 128 for image in bpy.data.images)  # the embedded atlas came back


def test_obj_is_the_posed_head_with_its_texture(bpy, head_reply, tmp_path):
    from addon.writers import head_export

    obj = _build(head_reply, subdivision_levels=0, smooth_iterations=0)
    written = head_export.export_obj([obj], tmp_path / "head.obj")
    assert [p.name for p in written] == ["head.obj", "head.mtl", "head.png"]
    assert (tmp_path / "head.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "map_Kd head.png" in (tmp_path / "head.mtl").read_text()
    lines = [line.split()[1:4] for line in (tmp_path / "head.obj").read_text().splitlines() if line.startswith("v ")]
    exported = np.array(lines, np.float64)
    posed = np.array(POSE)[:3, :3] @ _shape_key_mix(bpy, obj).T + np.array(POSE)[:3, 3:]
    x, y, z = posed
    np.testing.assert_allclose(exported, np.stack([x, z, -y], 1), atol=1e-5)  # OBJ is Y up, -Z forward
    assert "head.png" not in bpy.data.images  # the file-backed stand-in is gone again


OLDER_BLENDER_SCRIPT = r"""
import json, sys
import numpy as np
import bpy
sys.path.insert(0, sys.argv[-3])
from pathlib import Path
from types import SimpleNamespace
from addon.writers import glb, head_export, surfaces
from addon.scene import faces, heads
data, out = np.load(sys.argv[-2]), Path(sys.argv[-1])
face = SimpleNamespace(index=0, meta=json.loads((out / "meta.json").read_text()), arrays={k: data[k] for k in data.files})
obj = heads.build_head_object(face, name="head", settings=faces.BuildSettings(), metadata={})
mesh = obj.data
result = {"version": list(bpy.app.version), "quads": sum(p.loop_total == 4 for p in mesh.polygons),
          "keys": [k.name for k in mesh.shape_keys.key_blocks], "materials": len(obj.material_slots),
          "smooth": all(p.use_smooth for p in mesh.polygons), "matrix": [list(r) for r in obj.matrix_world],
          "modifiers": [m.type for m in obj.modifiers]}
irradiance = mesh.color_attributes[heads.IRRADIANCE_ATTRIBUTE]
result["irradiance"] = [irradiance.domain, irradiance.data_type, list(irradiance.data[-1].color)]
glb.write_glb(out / "head.glb", surfaces.with_shape_keys([obj]))
head_export.export_obj([obj], out / "head.obj")
head_export.export_fbx([obj], out / "head.fbx")
bpy.ops.wm.save_as_mainfile(filepath=str(out / "head.blend"))
bpy.ops.wm.read_homefile(use_empty=True)
bpy.ops.import_scene.fbx(filepath=str(out / "head.fbx"))
result["fbx_keys"] = [k.name for o in bpy.data.objects if o.type == "MESH" for k in o.data.shape_keys.key_blocks]
from addon.scene import animation, build
anim = np.load(out / "anim.npz")
bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = 30, 1.0
video = SimpleNamespace(index=0, meta=face.meta, arrays={**face.arrays, **{k: anim[k] for k in anim.files}})
(animated,) = build.build_reconstruction(SimpleNamespace(faces=[video]), photo="clip.mp4",
                                         settings=faces.BuildSettings(), metadata={})
curve = animation.fcurve(animated.data.shape_keys, 'key_blocks["jawOpen"].value', 0)
result["keyed"] = [round(point.co[0]) for point in curve.keyframe_points]
bpy.context.scene.frame_set(13)
result["jaw13"] = animated.data.shape_keys.key_blocks["jawOpen"].value
head_export.export_fbx([animated], out / "take.fbx")
bpy.ops.wm.read_homefile(use_empty=True)
bpy.ops.import_scene.fbx(filepath=str(out / "take.fbx"))
(back,) = [o for o in bpy.data.objects if o.type == "MESH"]
seen = []
for frame in range(0, 46):
    bpy.context.scene.frame_set(frame)
    seen.append(back.data.shape_keys.key_blocks["jawOpen"].value)
result["fbx_jaw"] = [min(seen), max(seen)]
print("RESULT " + json.dumps(result))
"""


REPO = Path(__file__).resolve().parents[1]
BPY42_PYTHON = REPO / ".venv-bpy42" / "bin" / "python"  # kept by ./run test (bpy + numpy only)


@pytest.mark.parametrize("blender", ["blender-3.4", "bpy-4.2-lts"])
def test_head_on_older_blenders(head_reply, tmp_path, blender):
    """The same modules build and export under Debian's Blender 3.4 and bpy 4.2 LTS (older mesh,
    shape-key and exporter APIs)."""
    script = tmp_path / "script.py"
    script.write_text(OLDER_BLENDER_SCRIPT)
    if blender == "blender-3.4":
        if shutil.which("blender") is None:
            pytest.skip("no blender binary on PATH")
        command = [shutil.which("blender"), "-b", "--factory-startup", "--python-exit-code", "1", "-P", str(script)]
    else:
        if not BPY42_PYTHON.exists():
            pytest.skip(f"no bpy 4.2 interpreter at {BPY42_PYTHON} (created by ./run test)")
        command = [str(BPY42_PYTHON), str(script)]
    np.savez(tmp_path / "head.npz", **head_reply.arrays)
    performance = _performance(head_reply.meta["expressions"])
    np.savez(tmp_path / "anim.npz", **performance)
    (tmp_path / "meta.json").write_text(json.dumps(head_reply.meta))
    result = subprocess.run([*command, "--", str(REPO), str(tmp_path / "head.npz"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["version"][:2] == ([3, 4] if blender == "blender-3.4" else [4, 2])
    names = ["Basis", *head_reply.meta["expressions"]]
    assert out["quads"] == int((head_reply.arrays["polygon_sizes"] == 4).sum())
    assert out["keys"] == names and out["fbx_keys"] == names and out["materials"] == 7 and out["smooth"]
    np.testing.assert_allclose(out["matrix"], POSE, atol=1e-6)
    assert out["modifiers"] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    last = head_reply.arrays["vertex_irradiance"][-1].astype(np.float32)
    assert out["irradiance"][:2] == ["POINT", "FLOAT_COLOR"]
    np.testing.assert_allclose(out["irradiance"][2], [*last, 1.0], atol=1e-6)  # the fitted lighting per vertex
    gltf = _glb_json(tmp_path / "head.glb")
    assert gltf["meshes"][0]["extras"]["targetNames"] == names[1:]
    assert all(len(p["targets"]) == 53 for p in gltf["meshes"][0]["primitives"])
    assert {p.name for p in tmp_path.iterdir()} >= {"head.obj", "head.mtl", "head.png", "head.blend"}
    assert out["keyed"] == [frame for frame in range(1, 40) if not 15 < frame < 21]  # a video's head: keys per scene frame
    assert out["jaw13"] == pytest.approx(performance["anim_weights"][6, names.index("jawOpen") - 1], abs=1e-4)
    assert out["fbx_jaw"] == [pytest.approx(0.0, abs=0.01), pytest.approx(0.95, abs=0.01)]  # the FBX keeps the keys


def _performance(names, video_fps=15.0, count=20, gap=(8, 10)):
    """A video's anim_* arrays: jawOpen ramps up, the head turns 0 -> 38 deg and moves 1 cm a second
    away; frames ``gap`` lost (untracked)."""
    from inference_server.head.camera import head_rotation

    times = np.arange(count) / video_fps
    weights = np.zeros((count, len(names)), np.float32)
    weights[:, names.index("jawOpen")] = np.linspace(0, 0.95, count)
    tracked = np.ones(count, np.uint8)
    tracked[gap[0]:gap[1]] = 0
    rotation = np.stack([head_rotation(2.0 * n, 3.0, 0.0) for n in range(count)]).astype(np.float32)
    translation = np.stack([(0.0, 0.0, 1.6 + 0.01 * t) for t in times]).astype(np.float32)
    return {"anim_frame": np.arange(count, dtype=np.int32), "anim_time": times, "anim_tracked": tracked,
            "anim_weights": weights, "anim_rotation": rotation, "anim_translation": translation}


def test_a_video_head_is_keyed_at_the_scene_frames(bpy, head_reply, tmp_path):
    """A 15 fps performance in a 30 fps scene: keys on every scene frame the tracked video covers (none
    inside the lost stretch), values interpolated between video frames, the pose as the object's
    rotation, the motion relative to where the head was placed; kept by .blend, Blender's glTF
    exporter (morph-weight and rotation channels) and the FBX exporter's re-import."""
    from types import SimpleNamespace

    from addon.data.meshdata import BuildSettings
    from addon.scene.build import build_reconstruction
    from addon.wire.axes import CAMERA_TO_BLENDER, MODEL_TO_BLENDER
    from addon.writers import head_export

    names = head_reply.meta["expressions"]
    performance = _performance(names)
    meta = {**head_reply.meta, "video": {"focal_px": 900.0, "frames": 20, "tracked": 18, "fps": 15.0}}
    face = SimpleNamespace(index=0, meta=meta, arrays={**head_reply.arrays, **performance})
    bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = 30, 1.0
    (obj,) = build_reconstruction(SimpleNamespace(faces=[face], meta={"image_size": [640, 480]}), photo="clip.mp4",
                                  settings=BuildSettings(), metadata={}, location=(0.5, 0.0, 0.0))
    key, scene = obj.data.shape_keys, bpy.context.scene
    # Video frame n is at scene frame 1 + 2n; frames 8 and 9 were lost, so scene frames 16..20 lie in
    # a stretch with no tracked frame on one side and get no key.
    expected = [frame for frame in range(1, 40) if not 15 < frame < 21]
    assert scene.frame_end >= 39
    # The values at the scene's frames: the video's where they meet, halfway between them in between.
    for frame in (1, 2, 13, 39):
        scene.frame_set(frame)
        video = (frame - 1) / 2
        jaw = np.interp(video, np.arange(20), performance["anim_weights"][:, names.index("jawOpen")])
        assert key.key_blocks["jawOpen"].value == pytest.approx(jaw, abs=1e-4), frame
        rotation = CAMERA_TO_BLENDER @ performance["anim_rotation"][int(video)] @ MODEL_TO_BLENDER.T
        if frame % 2 == 1:
            np.testing.assert_allclose(np.array(obj.matrix_world)[:3, :3], rotation, atol=1e-4)
            assert obj.location.y == pytest.approx(0.01 * video / 15.0, abs=1e-5)
            assert obj.location.x == pytest.approx(0.5, abs=1e-6)
    # The video's camera sees the head where the video did: a vertex projects to the pixel of the fit.
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    camera = bpy.data.objects["clip_camera"]
    assert camera.data.lens == pytest.approx(900.0 * 36 / 640) and scene.render.resolution_x == 640
    vertex = np.asarray(obj.data.vertices[1234].co)  # the basis: object space, Blender axes
    for frame in (1, 13, 39):
        scene.frame_set(frame)
        seen = world_to_camera_view(scene, camera, obj.matrix_world @ Vector(vertex))
        n = (frame - 1) // 2
        posed = performance["anim_rotation"][n] @ (MODEL_TO_BLENDER.T @ vertex) + performance["anim_translation"][n]
        pixel = 900.0 * posed[:2] / posed[2] + (320, 240)
        assert (seen.x * 640, (1 - seen.y) * 480) == pytest.approx(tuple(pixel), abs=0.05), frame
    action = key.animation_data.action
    jaw_keys = _keyed_frames(key, 'key_blocks["jawOpen"].value')
    assert jaw_keys == expected and _keyed_frames(obj, "rotation_quaternion", 0) == expected
    assert action is not None and obj.rotation_mode == "QUATERNION"

    name = obj.name
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "take.blend"))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "take.blend"))
    reopened = bpy.data.objects[name]
    assert _keyed_frames(reopened.data.shape_keys, 'key_blocks["jawOpen"].value') == expected

    reopened.select_set(True)
    bpy.ops.export_scene.gltf(filepath=str(tmp_path / "take.glb"), export_format="GLB", use_selection=True,
                              export_animations=True, export_morph=True, export_morph_normal=False)
    channels = {channel["target"]["path"] for animation in _glb_json(tmp_path / "take.glb").get("animations", [])
                for channel in animation["channels"]}
    assert {"weights", "rotation", "translation"} <= channels
    from addon.writers import glb, surfaces

    glb.write_glb(tmp_path / "ours.glb", surfaces.with_shape_keys([reopened]))  # the batch's own writer
    ours, _ = glb.read_glb(tmp_path / "ours.glb")
    (animation,) = ours["animations"]
    assert {c["target"]["path"] for c in animation["channels"]} == {"weights", "rotation", "translation"}
    times = ours["accessors"][animation["samplers"][0]["input"]]
    assert times["count"] == len(expected) and times["max"] == [pytest.approx(38 / 30)]
    assert ours["accessors"][animation["samplers"][0]["output"]]["count"] == len(expected) * 53
    bpy.ops.object.select_all(action="DESELECT")
    bpy.ops.import_scene.gltf(filepath=str(tmp_path / "ours.glb"))
    (imported,) = bpy.context.selected_objects
    assert imported.data.shape_keys.animation_data is not None and imported.animation_data is not None
    head_export.export_fbx([reopened], tmp_path / "take.fbx")
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.import_scene.fbx(filepath=str(tmp_path / "take.fbx"))
    (imported,) = [o for o in bpy.data.objects if o.type == "MESH"]
    assert imported.data.shape_keys.animation_data is not None
    seen = []
    for frame in range(0, 46):  # the importer places the take on its own frame grid
        bpy.context.scene.frame_set(frame)
        seen.append(imported.data.shape_keys.key_blocks["jawOpen"].value)
    assert min(seen) == pytest.approx(0.0, abs=0.01) and max(seen) == pytest.approx(0.95, abs=0.01)


def _keyed_frames(id_data, data_path: str, index: int = 0) -> list:
    """Frames keyed on ``data_path[index]`` in ``id_data``'s action, in any Blender's layout."""
    from addon.scene.animation import fcurve

    return [round(point.co[0]) for point in fcurve(id_data, data_path, index).keyframe_points]
