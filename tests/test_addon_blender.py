"""The add-on inside Blender (bpy 5.0 module): objects built from real server replies, and error paths.

Modal operators and timers do not run headless, so the tests call ``execute`` (which waits on the
worker's future) and the main-thread step ``operators.apply_finished`` directly.
"""
from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from addon.server.process import free_port
from tests.addon_fixtures import astronaut_reply, bpy_module, pixels_of, rgb_pixels  # noqa: F401 (fixtures)
from tests.photo_fixtures import photo_folder, two_faces_folder  # noqa: F401 (fixtures)
from tests.video_fixtures import performed_video  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def faceforge(bpy_module, server_address):
    """The add-on registered by hand (package ``addon``), talking to the test server."""
    import addon
    from addon.ui import operators, preferences

    addon.register()
    preferences.DEFAULTS.server_address = server_address
    preferences.DEFAULTS.request_timeout = 180.0
    try:
        yield operators
    finally:
        addon.unregister()


@pytest.fixture
def bpy(bpy_module, faceforge):
    bpy_module.ops.wm.read_homefile(use_empty=True)
    return bpy_module


def _build(bpy, reply, **settings):
    from addon.scene import faces

    info, reconstruction = reply
    return faces.build_face_object(
        reconstruction.faces[0], name="astronaut", settings=faces.BuildSettings(**settings), location=(1.0, 2.0, 3.0),
        metadata={"source_photo": "/photos/astronaut.png", "server_version": info["server_version"],
                  "timings_ms": reconstruction.meta["timings_ms"]})


def test_object_from_real_reply(bpy, astronaut_reply):
    obj = _build(bpy, astronaut_reply)
    arrays = astronaut_reply[1].faces[0].arrays
    mesh = obj.data
    assert obj.name == "astronaut" and obj.type == "MESH"
    assert obj.name in bpy.context.scene.objects
    assert tuple(obj.location) == (1.0, 2.0, 3.0)
    assert len(mesh.vertices) == len(arrays["vertices"]) > 1000
    assert len(mesh.polygons) == len(arrays["faces"])
    assert {p.loop_total for p in mesh.polygons[:100]} == {3}
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(-1, 3), arrays["vertices"])
    width = co.reshape(-1, 3)[:, 0].ptp()
    assert 0.10 < width < 0.25  # metres: a human face, not pixels or centimetres

    # Faces the front view: polygon normals point to -Y on average.
    normals = np.empty(len(mesh.polygons) * 3, np.float32)
    mesh.polygons.foreach_get("normal", normals)
    assert normals.reshape(-1, 3).mean(0)[1] < -0.5
    smooth = np.empty(len(mesh.polygons), bool)
    mesh.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()

    assert [layer.name for layer in mesh.uv_layers] == ["UVMap"]
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    assert 0.0 <= uv.min() and uv.max() <= 1.0
    np.testing.assert_allclose(uv.reshape(-1, 2), arrays["uvs"][arrays["faces"].ravel()], atol=1e-6)


def test_material_textures_and_packed_images(bpy, astronaut_reply):
    obj = _build(bpy, astronaut_reply)
    arrays = astronaut_reply[1].faces[0].arrays
    material = obj.active_material
    nodes = material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE"
    texture = link.from_node.image
    assert texture.packed_file is not None and not texture.is_float
    assert tuple(texture.size) == (arrays["texture"].shape[1], arrays["texture"].shape[0])
    rgba = pixels_of(texture)
    # Blender rows run bottom-up: its last row is the texture's first.
    np.testing.assert_allclose(rgba[-1, :, :3], arrays["texture"][0] / 255, atol=1 / 255)
    np.testing.assert_allclose(rgba[0, :, :3], arrays["texture"][-1] / 255, atol=1 / 255)

    displace = obj.modifiers["Detail"]
    detail = displace.texture.image
    assert detail.is_float and detail.packed_file is not None
    assert detail.colorspace_settings.name == "Non-Color"
    np.testing.assert_allclose(pixels_of(detail)[::-1, :, 0], 0.5 + arrays["detail"], atol=1e-5)

    depth = obj["faceforge_depth"]
    assert depth.is_float and depth.packed_file is not None
    np.testing.assert_allclose(pixels_of(depth)[::-1, :, 0], arrays["depth"], atol=0.5 / 65535 + 1e-7)  # 16 bits
    assert detail.packed_file.data[:8] == depth.packed_file.data[:8] == b"\x89PNG\r\n\x1a\n"

    from addon.scene import faces

    beyond = faces.map_image("beyond", np.array([[-0.25, 0.5], [1.0, 1.75]], np.float32))  # no PNG holds these
    assert beyond.is_float and beyond.packed_file is not None and beyond.packed_file.data[:4] == b"v/1\x01"  # EXR
    np.testing.assert_allclose(pixels_of(beyond)[::-1, :, 0], [[-0.25, 0.5], [1.0, 1.75]], atol=1e-6)


def test_modifier_stack_and_metadata(bpy, astronaut_reply):
    obj = _build(bpy, astronaut_reply, smooth_iterations=7, smooth_factor=0.3, subdivision_levels=2,
                 detail_strength=0.004)
    assert [m.type for m in obj.modifiers] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    smooth, subsurf, displace = obj.modifiers
    assert smooth.iterations == 7 and smooth.lambda_factor == pytest.approx(0.3)
    assert subsurf.levels == 2 and subsurf.render_levels == 2
    assert not subsurf.use_limit_surface  # the exact limit surface costs seconds per face, unseen at these levels
    assert displace.texture_coords == "UV" and displace.uv_layer == "UVMap"
    assert displace.mid_level == pytest.approx(0.5) and displace.strength == pytest.approx(0.004)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    assert len(evaluated.data.vertices) > 4 * len(obj.data.vertices)  # two subdivision levels

    meta = obj["faceforge"].to_dict()
    info, reconstruction = astronaut_reply
    assert meta["source_photo"] == "/photos/astronaut.png"
    assert meta["server_version"] == info["server_version"]
    assert set(meta["timings_ms"]) == set(reconstruction.meta["timings_ms"])
    assert meta["settings"] == {"smooth_iterations": 7, "smooth_factor": pytest.approx(0.3), "neutral_expression": 0,
                                "photo_lighting": 0, "video_camera": 1, "subdivision_levels": 2,
                                "detail_strength": pytest.approx(0.004)}
    assert meta["face"]["vertex_count"] == len(obj.data.vertices)
    assert meta["face_index"] == 0 and len(meta["face"]["box"]) == 4


def test_smoothing_off_hides_the_modifier(bpy, astronaut_reply):
    obj = _build(bpy, astronaut_reply, smooth_iterations=0, subdivision_levels=0)
    assert not obj.modifiers["Smooth"].show_viewport and obj.modifiers["Subdivision"].levels == 0


def test_saved_file_travels(bpy, astronaut_reply, tmp_path):
    obj = _build(bpy, astronaut_reply)
    texture = pixels_of(obj.active_material.node_tree.nodes["Image Texture"].image).copy()
    path = str(tmp_path / "face.blend")
    bpy.ops.wm.save_as_mainfile(filepath=path)
    bpy.ops.wm.read_homefile(use_empty=True)
    assert "astronaut" not in bpy.data.objects
    bpy.ops.wm.open_mainfile(filepath=path)
    obj = bpy.data.objects["astronaut"]
    images = {image.name: image for image in bpy.data.images}
    assert {"astronaut_texture", "astronaut_detail", "astronaut_depth"} <= set(images)
    assert all(images[name].packed_file is not None for name in ("astronaut_texture", "astronaut_detail",
                                                                  "astronaut_depth"))
    np.testing.assert_allclose(pixels_of(images["astronaut_texture"]), texture, atol=1 / 255)
    assert obj["faceforge_depth"] == images["astronaut_depth"]
    assert obj["faceforge"]["source_photo"] == "/photos/astronaut.png"


def _world_points(mesh, matrix) -> np.ndarray:
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    return co.reshape(-1, 3) @ np.array(matrix)[:3, :3].T + np.array(matrix)[:3, 3]


def test_glb_of_the_evaluated_face_reads_back_like_blenders_own_export(bpy, astronaut_reply, tmp_path):
    """The batch writes face .glb files itself (``addon.glb``): Blender's importer must find the
    mesh the viewport shows, posed, with the texture's own bytes, and Blender's exporter must agree
    on the vertex and triangle counts and the bounds."""
    from addon.writers import glb, surfaces
    from addon.scene import faces

    obj = _build(bpy, astronaut_reply)
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = (0.1, 0.2, 0.3)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    shown = obj.evaluated_get(depsgraph)
    expected = _world_points(shown.to_mesh(), shown.matrix_world)
    shown.to_mesh_clear()
    (surface,) = surfaces.evaluated([obj])
    assert len(surface.positions) == len(expected) > 4 * len(obj.data.vertices)  # subdivided, no UV seam split
    glb.write_glb(tmp_path / "ours.glb", [surface])
    ours, binary = glb.read_glb(tmp_path / "ours.glb")
    image = ours["bufferViews"][ours["images"][0]["bufferView"]]
    assert binary[image["byteOffset"]:image["byteOffset"] + image["byteLength"]] == \
        faces.png_of(faces.texture_of(obj))

    obj.select_set(True)
    bpy.ops.export_scene.gltf(filepath=str(tmp_path / "blender.glb"), export_format="GLB", use_selection=True,
                              export_apply=True)
    theirs, _ = glb.read_glb(tmp_path / "blender.glb")
    for name in ("POSITION", "TEXCOORD_0"):
        mine = ours["accessors"][ours["meshes"][0]["primitives"][0]["attributes"][name]]
        blender = theirs["accessors"][theirs["meshes"][0]["primitives"][0]["attributes"][name]]
        assert mine["count"] == blender["count"]
    assert ours["accessors"][ours["meshes"][0]["primitives"][0]["indices"]]["count"] == \
        theirs["accessors"][theirs["meshes"][0]["primitives"][0]["indices"]]["count"]
    assert ours["materials"] == theirs["materials"] and ours["extensionsUsed"] == theirs["extensionsUsed"]
    assert ours["samplers"] == theirs["samplers"]
    assert ours["nodes"][0]["rotation"] == pytest.approx(theirs["nodes"][0]["rotation"], abs=1e-6)
    assert ours["nodes"][0]["translation"] == pytest.approx(theirs["nodes"][0]["translation"], abs=1e-6)

    bpy.ops.object.select_all(action="DESELECT")
    bpy.ops.import_scene.gltf(filepath=str(tmp_path / "ours.glb"))
    (imported,) = bpy.context.selected_objects
    from scipy.spatial import cKDTree

    points = _world_points(imported.data, imported.matrix_world)
    assert len(points) == len(expected)
    assert cKDTree(expected).query(points)[0].max() < 2e-6 and cKDTree(points).query(expected)[0].max() < 2e-6
    texture = imported.active_material.node_tree.nodes["Image Texture"].image
    np.testing.assert_allclose(pixels_of(texture), pixels_of(faces.texture_of(obj)), atol=1e-6)


def test_glb_surfaces_keep_each_polygons_material(bpy, astronaut_reply):
    from addon.writers import surfaces

    obj = _build(bpy, astronaut_reply, subdivision_levels=0)
    obj.data.materials.append(bpy.data.materials.new("second"))
    marks = (np.arange(len(obj.data.polygons)) % 3 == 0).astype(np.int32)
    obj.data.polygons.foreach_set("material_index", marks)
    obj.data.update()
    (surface,) = surfaces.evaluated([obj])
    assert [look.name for look in surface.looks] == ["astronaut_skin", "second"]
    assert len(surface.triangles) == len(obj.data.polygons)  # triangles stay triangles without subdivision
    np.testing.assert_array_equal(surface.triangle_material, marks)


def test_operator_from_photo_file(bpy, faceforge, photo_folder):
    props = bpy.context.scene.faceforge
    props.photo_path = str(photo_folder / "astronaut.png")
    props.resolution = 60
    bpy.context.scene.cursor.location = (0.5, -1.0, 1.5)
    assert bpy.ops.faceforge.reconstruct() == {"FINISHED"}
    obj = bpy.data.objects["astronaut"]
    assert tuple(obj.location) == pytest.approx((0.5, -1.0, 1.5))
    assert bpy.context.view_layer.objects.active == obj and obj.select_get()
    assert obj["faceforge"]["options"].to_dict() == {"face": "largest", "resolution": 60, "geometry": "auto",
                                                     "depth_backend": "landmarks", "refine": "light",
                                                     "shape_cues": "auto"}
    assert obj["faceforge"]["source_photo"] == str(photo_folder / "astronaut.png")
    level, message = faceforge.SESSION.message
    assert level == "INFO" and message.startswith("Reconstructed 1 face from astronaut.png")


def test_operator_from_loaded_and_generated_images(bpy, faceforge, photo_folder, astronaut_rgb):
    props = bpy.context.scene.faceforge
    props.photo_source = "IMAGE"
    props.photo_image = bpy.data.images.load(str(photo_folder / "grace_hopper.jpg"))
    assert bpy.ops.faceforge.reconstruct() == {"FINISHED"}
    assert "grace_hopper" in bpy.data.objects  # named after the image datablock, without extension

    height, width = astronaut_rgb.shape[:2]
    painted = bpy.data.images.new("painted", width, height)  # exists only in memory: sent as PNG
    painted.pixels.foreach_set(rgb_pixels(astronaut_rgb))
    props.photo_image = painted
    assert bpy.ops.faceforge.reconstruct() == {"FINISHED"}
    assert len(bpy.data.objects["painted"].data.vertices) > 1000


def test_all_faces_one_object_each(bpy, faceforge, two_faces_folder):
    props = bpy.context.scene.faceforge
    props.photo_path = str(two_faces_folder / "pair.png")
    props.face = "ALL"
    assert bpy.ops.faceforge.reconstruct() == {"FINISHED"}
    faces = sorted((o for o in bpy.data.objects if o.name.startswith("pair.face")), key=lambda o: o.location.x)
    assert [o.name for o in faces] == ["pair.face0", "pair.face1"]
    # Side by side, FACE_GAP_M apart (build.build_reconstruction places the batch's faces the same way).
    from addon.scene.build import FACE_GAP_M

    spans = [(obj.location.x + min(v.co.x for v in obj.data.vertices),
              obj.location.x + max(v.co.x for v in obj.data.vertices)) for obj in faces]
    assert spans[1][0] - spans[0][1] == pytest.approx(FACE_GAP_M, abs=1e-4)
    assert faces[0]["faceforge"]["faces_detected"] == 2


def _finish(bpy, faceforge, photo_path, **prefs):
    """Submit through the panel's own path and run the main-thread step; never raises."""
    from addon.ui import preferences

    saved = {name: getattr(preferences.DEFAULTS, name) for name in prefs}
    for name, value in prefs.items():
        setattr(preferences.DEFAULTS, name, value)
    try:
        bpy.context.scene.faceforge.photo_path = str(photo_path)
        request = faceforge.submit(bpy.context)
        concurrent.futures.wait([request.job.future], 120)
        return faceforge.apply_finished(bpy.context, request)
    finally:
        for name, value in saved.items():
            setattr(preferences.DEFAULTS, name, value)


@pytest.mark.parametrize("photo_name, prefs, expected", [
    ("astronaut.png", {"server_address": "unreachable"}, "No FaceForge server answers at tcp://127.0.0.1:"),
    ("grace_hopper.jpg", {"request_timeout": 0.05}, "did not answer in time"),
    ("coffee_no_face.png", {}, "No face found in "),
    ("corrupt.jpg", {}, "The photo cannot be used"),
    ("missing.jpg", {}, "No such file or directory"),
])
def test_errors_are_reported_not_raised(bpy, faceforge, photo_folder, photo_name, prefs, expected):
    if prefs.get("server_address") == "unreachable":
        prefs = {"server_address": f"tcp://127.0.0.1:{free_port()}"}
    before = set(bpy.data.objects.keys())
    level, message, objects = _finish(bpy, faceforge, photo_folder / photo_name, **prefs)
    assert level == "ERROR" and expected in message and "Traceback" not in message
    assert objects == [] and set(bpy.data.objects.keys()) == before


def test_operator_reports_errors_through_blender(bpy, faceforge, photo_folder):
    bpy.context.scene.faceforge.photo_path = str(photo_folder / "coffee_no_face.png")
    # bpy.ops turns an operator's ERROR report into RuntimeError("Error: <message>") for the calling script.
    with pytest.raises(RuntimeError, match=r"^Error: No face found in .*coffee_no_face\.png"):
        bpy.ops.faceforge.reconstruct()
    assert faceforge.SESSION.message[0] == "ERROR" and not bpy.data.objects
    bpy.context.scene.faceforge.photo_path = ""
    with pytest.raises(RuntimeError, match="Choose a photo file first"):
        bpy.ops.faceforge.reconstruct()


def test_start_server_finds_its_python_like_the_batch(bpy, faceforge, monkeypatch, tmp_path):
    """An empty Python preference means ``server.process.find_python``'s order; nothing found is one
    clear message, not a server started with a Python that cannot load torch."""
    from addon.ui import preferences

    monkeypatch.setattr(preferences.DEFAULTS, "server_address", f"tcp://127.0.0.1:{free_port()}")
    monkeypatch.setenv("FACEFORGE_PYTHON", "/nonexistent/python")
    with pytest.raises(RuntimeError, match="Could not start the server: cannot run '/nonexistent/python'"):
        bpy.ops.faceforge.server_start()
    monkeypatch.delenv("FACEFORGE_PYTHON")
    monkeypatch.setenv("FACEFORGE_HOME", str(tmp_path))     # a server home without .venv
    monkeypatch.setattr(sys, "executable", "/usr/bin/blender")  # Blender's own binary never qualifies
    with pytest.raises(RuntimeError, match="No Python with torch found"):
        bpy.ops.faceforge.server_start()
    assert faceforge.SESSION.message[0] == "ERROR" and faceforge.SESSION.server_job is None


def test_cancelled_request_is_a_warning(bpy, faceforge, photo_folder):
    bpy.context.scene.faceforge.photo_path = str(photo_folder / "grace_hopper.jpg")
    request = faceforge.submit(bpy.context)
    request.job.cancel()
    concurrent.futures.wait([request.job.future], 30)
    assert faceforge.apply_finished(bpy.context, request) == ("WARNING", "Reconstruction cancelled", [])
    assert not bpy.data.objects


BLENDER_34_SCRIPT = r"""
import json, sys
import numpy as np
import bpy
sys.path.insert(0, sys.argv[-3])
from types import SimpleNamespace
from addon.scene import faces
data = np.load(sys.argv[-2])
face = SimpleNamespace(index=0, meta={"vertex_count": int(len(data["vertices"]))}, arrays={k: data[k] for k in data.files})
obj = faces.build_face_object(face, name="astronaut", settings=faces.BuildSettings(), location=(0.0, 0.0, 1.0),
                              metadata={"source_photo": "astronaut.png"})
uv = np.empty(len(obj.data.loops) * 2, np.float32)
obj.data.uv_layers[0].data.foreach_get("uv", uv)
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[-1])
print("RESULT " + json.dumps({
    "version": list(bpy.app.version), "vertices": len(obj.data.vertices), "polygons": len(obj.data.polygons),
    "smooth": all(p.use_smooth for p in obj.data.polygons), "uv_ok": bool(np.allclose(
        uv.reshape(-1, 2), data["uvs"][data["faces"].ravel()], atol=1e-6)),
    "modifiers": [m.type for m in obj.modifiers], "packed": sorted(i.name for i in bpy.data.images if i.packed_file),
    "base_color_linked": obj.active_material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].is_linked,
    "source": obj["faceforge"]["source_photo"]}))
"""


def test_builder_on_blender_3_4(astronaut_reply, tmp_path):
    """The batch script builds with this module under Debian's Blender 3.4 too (older mesh/UV/material APIs)."""
    blender = shutil.which("blender")
    if blender is None:
        pytest.skip("no blender binary on PATH")
    arrays = astronaut_reply[1].faces[0].arrays
    np.savez(tmp_path / "face.npz", **arrays)
    result = subprocess.run([blender, "-b", "--factory-startup", "--python-expr", BLENDER_34_SCRIPT, "--",
                             str(Path(__file__).resolve().parents[1]), str(tmp_path / "face.npz"),
                             str(tmp_path / "face.blend")], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["vertices"] == len(arrays["vertices"]) and out["polygons"] == len(arrays["faces"])
    assert out["smooth"] and out["uv_ok"] and out["base_color_linked"]
    assert out["modifiers"] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    assert out["packed"] == ["astronaut_depth", "astronaut_detail", "astronaut_texture"]
    assert out["source"] == "astronaut.png" and (tmp_path / "face.blend").stat().st_size > 1_000_000


def test_the_panel_makes_one_head_from_several_photos_of_one_person(bpy, faceforge, head_server, tmp_path):
    from dataclasses import replace

    from PIL import Image

    from benchmarks.head_fit_eval import make_subject, render_subject
    from inference_server.head.model import HeadModel
    from tests.ict_fixtures import ICT_NPZ

    model = HeadModel.load(ICT_NPZ)
    subject = make_subject(model, 3, False)
    for name, yaw in (("front", 0.0), ("turned", 30.0)):  # two views of one rendered head
        Image.fromarray(render_subject(model, replace(subject, pose=(yaw, 4.0, -3.0)))).save(tmp_path / f"{name}.png")
    more_photos = bpy.context.scene.faceforge.more_photos
    more_photos.add().image = bpy.data.images.load(str(tmp_path / "turned.png"))  # a Blender image as a view
    try:
        level, message, objects = _finish(bpy, faceforge, tmp_path / "front.png", server_address=head_server.address)
    finally:
        more_photos.clear()  # the scene outlives this test: later panel tests expect one photo
    assert level == "INFO", message
    (obj,) = objects
    assert obj.name == "front" and len(obj.data.shape_keys.key_blocks) == 54  # Basis + 53 expressions
    photos = obj["faceforge"]["face"]["photos"]
    assert [photo["photo"] for photo in photos] == [1, 2]


def _panel_video(bpy, faceforge, server, path, scene_fps: int, frames: tuple = (1, 0)) -> tuple:
    """The panel's Reconstruct Animated Head on ``path`` in a scene at ``scene_fps``, First/Last Frame ``frames``:
    (level, message, the head, its video camera or None). The panel's settings are put back after."""
    from addon.ui import preferences

    props, scene = bpy.context.scene.faceforge, bpy.context.scene
    saved, before = preferences.DEFAULTS.server_address, set(bpy.data.objects.keys())
    scene.render.fps, scene.render.fps_base = scene_fps, 1.0
    props.photo_source, props.video_path = "VIDEO", str(path)
    props.video_first_frame, props.video_last_frame = frames
    preferences.DEFAULTS.server_address = server.address
    try:
        request = faceforge.submit(bpy.context)
        concurrent.futures.wait([request.job.future], 300)
        level, message, objects = faceforge.apply_finished(bpy.context, request)
    finally:
        props.photo_source, props.video_path = "FILE", ""  # the scene outlives the test
        props.video_first_frame, props.video_last_frame = 1, 0
        preferences.DEFAULTS.server_address = saved
    cameras = [bpy.data.objects[name] for name in set(bpy.data.objects.keys()) - before
               if bpy.data.objects[name].type == "CAMERA"]
    return level, message, objects, cameras[0] if cameras else None


def test_the_panel_makes_an_animated_head_from_a_video(bpy, faceforge, performed_video, head_server):
    """Photo source Video: the session reads the file off the main thread and sends it as one request;
    the head comes back keyed at the scene's frame rate (a 15 fps video in a 30 fps scene)."""
    from addon.scene.animation import fcurve

    path, names, weights, _ = performed_video
    scene = bpy.context.scene
    level, message, objects, camera = _panel_video(bpy, faceforge, head_server, path, 30)
    assert level == "INFO" and "animated head" in message and "30 of 30 frames" in message, message
    assert "The video runs at 15 fps and the scene at 30" in message  # the background plays at the video's rate
    (obj,) = objects
    assert obj.name.startswith("performed") and len(obj.data.shape_keys.key_blocks) == 54
    jaw = fcurve(obj.data.shape_keys, 'key_blocks["jawOpen"].value', 0)
    frames = [round(point.co[0]) for point in jaw.keyframe_points]
    assert frames == list(range(scene.frame_start, scene.frame_start + 59))  # 29 video steps x 2 scene frames + 1
    values = [point.co[1] for point in jaw.keyframe_points][::2]
    assert np.corrcoef(values, weights[:, names.index("jawOpen")])[0, 1] > 0.85
    assert obj.rotation_mode == "QUATERNION" and obj.animation_data.action is not None
    assert camera.name.startswith("performed_camera")  # the video's camera, the video as its background
    (background,) = camera.data.background_images
    assert background.source == "MOVIE_CLIP" and background.clip.frame_duration == 30
    assert background.clip.frame_start == scene.frame_start
    assert (scene.render.resolution_x, scene.render.resolution_y) == (640, 640)


def test_the_panel_keys_only_the_chosen_frames_of_a_video(bpy, faceforge, performed_video, head_server):
    """First/Last Frame in the panel: the server fits only those frames; the keys start at the scene's first
    frame, and the video camera's background shows the range's first frame there."""
    from addon.scene.animation import fcurve

    path, names, weights, _ = performed_video
    scene = bpy.context.scene
    try:
        level, message, objects, camera = _panel_video(bpy, faceforge, head_server, path, 15, frames=(11, 25))
    finally:
        scene.render.fps = 30
    assert level == "INFO" and "15 of 15 frames" in message and "The video runs" not in message, message
    (obj,) = objects
    assert obj["faceforge"]["face"]["video"]["first_frame"] == 10
    jaw = fcurve(obj.data.shape_keys, 'key_blocks["jawOpen"].value', 0)
    assert [round(point.co[0]) for point in jaw.keyframe_points] == list(range(scene.frame_start, scene.frame_start + 15))
    values = [point.co[1] for point in jaw.keyframe_points]
    assert np.corrcoef(values, weights[10:25, names.index("jawOpen")])[0, 1] > 0.85
    clip = camera.data.background_images[0].clip
    assert clip.frame_start == scene.frame_start - 10  # video frame 11 (1-based) at the scene's first frame
