"""Head mode through the headless batch: Debian's Blender 3.4 starts a server that finds the installed
model, and writes .blend (shape keys), .glb (morph targets), .fbx and .obj for a real photo."""
from __future__ import annotations

import json

from addon.writers import glb
from addon.wire.errors import Exit
from tests.batch_fixtures import blender_command, by_key, inspect_blend, load_summary, needs_blender, run_batch
from tests.photo_fixtures import one_photo_folder  # noqa: F401 (fixture)
from tests.video_fixtures import performed_video  # noqa: F401 (fixture)


@needs_blender
def test_blender_batch_builds_and_exports_a_full_head(one_photo_folder, tmp_path, head_data_dir):
    output = tmp_path / "out"
    result = run_batch(blender_command("--input", str(one_photo_folder), "--output", str(output),
                                       "--formats", "blend,glb,fbx,obj", "--device", "cpu"),
                       env={"FACEFORGE_DATA": str(head_data_dir)})
    assert result.returncode == Exit.OK
    (entry,) = by_key(load_summary(output)).values()
    assert entry["status"] == "ok" and entry["vertices"] == 24591
    assert [face["geometry"] for face in entry["face_details"]] == ["head"]
    folder = output / entry["key"]
    blend = inspect_blend(folder / f"{entry['key']}.blend")
    (head,) = blend["objects"]
    assert head["vertices"] == 24591 and head["polygons"] > 24000 and head["uv_layers"]
    assert head["modifiers"] == ["LAPLACIANSMOOTH", "SUBSURF", "DISPLACE"]
    document, _ = glb.read_glb(folder / f"{entry['key']}.glb")
    (mesh,) = document["meshes"]
    assert len(mesh["extras"]["targetNames"]) == 53 and "jawOpen" in mesh["extras"]["targetNames"]
    assert all(len(primitive["targets"]) == 53 for primitive in mesh["primitives"])
    assert (folder / f"{entry['key']}.fbx").stat().st_size > 1_000_000
    obj_text = (folder / f"{entry['key']}.obj").read_text()
    assert obj_text.count("\nv ") > 24000 and "mtllib" in obj_text
    # The MTL names the one texture file the batch wrote and lists: no second copy under another name.
    textures = {line.split()[1] for line in (folder / f"{entry['key']}.mtl").read_text().splitlines()
                if line.startswith("map_Kd")}
    manifest = json.loads((folder / "faceforge.json").read_text())
    assert textures == {f"{entry['key']}_face0.png"} <= set(manifest["files"])
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{entry['key']}_face0.png"]


@needs_blender
def test_blender_batch_turns_a_video_into_an_animated_head(performed_video, tmp_path, head_data_dir):
    """A video among the inputs: one head, keyed in the .blend, animated in the .glb (morph weights,
    rotation, translation) and the .fbx, and its performance as a Live Link Face .csv."""
    import csv
    import shutil

    from addon.data.arkit import COLUMNS

    path, names, _, _ = performed_video
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(path, folder / "take.mp4")
    output = tmp_path / "out"
    result = run_batch(blender_command("--input", str(folder), "--output", str(output), "--formats", "blend,glb,fbx",
                                       "--device", "cpu"), env={"FACEFORGE_DATA": str(head_data_dir)})
    assert result.returncode == Exit.OK
    (entry,) = by_key(load_summary(output)).values()
    assert entry["status"] == "ok" and entry["vertices"] == 24591
    out = output / entry["key"]
    document, _ = glb.read_glb(out / f"{entry['key']}.glb")
    (animation,) = document["animations"]
    assert {c["target"]["path"] for c in animation["channels"]} == {"weights", "rotation", "translation"}
    with open(out / f"{entry['key']}.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 31
    assert (out / f"{entry['key']}.fbx").stat().st_size > 1_000_000
    assert f"{entry['key']}.csv" in json.loads((out / "faceforge.json").read_text())["files"]


@needs_blender
def test_blender_batch_same_person_fits_one_head_per_folder(tmp_path, head_data_dir, astronaut_png):
    """--same-person: a folder holding two views of one rendered head gives one head fitted to both; a
    photo loose beside it gives its own head."""
    from dataclasses import replace

    from PIL import Image

    from benchmarks.head_fit_eval import make_subject, render_subject
    from inference_server.head.model import HeadModel
    from tests.ict_fixtures import ICT_NPZ

    model = HeadModel.load(ICT_NPZ)
    subject = make_subject(model, 3, False)
    person = tmp_path / "in" / "renderhead"
    person.mkdir(parents=True)
    for name, yaw in (("a_front.png", 0.0), ("b_turned.png", 30.0)):
        Image.fromarray(render_subject(model, replace(subject, pose=(yaw, 4.0, -3.0)))).save(person / name)
    (tmp_path / "in" / "astronaut.png").write_bytes(astronaut_png)
    output = tmp_path / "out"
    result = run_batch(blender_command("--input", str(tmp_path / "in"), "--output", str(output), "--same-person",
                                       "--formats", "blend", "--device", "cpu"),
                       env={"FACEFORGE_DATA": str(head_data_dir)})
    assert result.returncode == Exit.OK
    entries = by_key(load_summary(output))
    assert sorted(entries) == ["astronaut", "renderhead"] and all(e["status"] == "ok" for e in entries.values())
    assert entries["renderhead"]["photo"].endswith("renderhead")
    assert [face["photos"] for face in entries["renderhead"]["face_details"]] == [2]  # one head from both views
    assert "photos" not in entries["astronaut"]["face_details"][0]
    (head,) = inspect_blend(output / "renderhead" / "renderhead.blend")["objects"]
    assert head["vertices"] == 24591 and head["name"] == "renderhead"
