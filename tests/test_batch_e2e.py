"""End-to-end tests of the batch (``scripts/batch.py`` launching ``addon.batch``): Debian's Blender
binary (3.4) and ``python`` + bpy from PyPI, real photos, a real server, outputs read back (.blend
opened in Blender, .glb parsed here)."""
from __future__ import annotations

import re
import time
from pathlib import Path


from addon.batch import outputs
from addon.server.process import free_address, tcp_in_use
from addon.wire.errors import Exit
from tests.batch_fixtures import (BLENDER, blender_command, by_key, glb_summary, inspect_blend,  # noqa: F401
                                  load_summary, needs_blender, needs_bpy, ply_header, python_command, run_batch,
                                  interrupt, start_until_ready, stl_summary)
from tests.photo_fixtures import one_photo_folder, photo_folder, two_faces_folder  # noqa: F401 (fixtures)

ALL_FORMATS = "blend,glb,obj,ply,stl"
PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\] (\S+): (ok|skipped|failed)\b.*\| elapsed \d+:\d\d \| ETA (\d+:\d\d|--:--)")


def progress_lines(stdout: str) -> list:
    return [m.groups() for m in map(PROGRESS.match, stdout.splitlines()) if m]


def no_staging_left(output: Path) -> bool:
    return not [p for p in output.iterdir() if p.name.startswith(outputs.STAGING_PREFIX)]


@needs_blender
def test_blender_batch_starts_its_server_and_writes_every_format(photo_folder, tmp_path):
    """The issue's main command: no --server (a local server is started and stopped), every format,
    two real photos, a photo without a face and a corrupt JPEG -> exit status 1, good outputs."""
    output = tmp_path / "out"
    result = run_batch(blender_command("--input", str(photo_folder), "--output", str(output), "--formats", ALL_FORMATS,
                                       "--device", "cpu", "--jobs", "2"))
    assert result.returncode == Exit.FAILED

    lines = progress_lines(result.stdout)
    assert [(done, total) for done, total, *_ in lines] == [("1", "4"), ("2", "4"), ("3", "4"), ("4", "4")]
    assert {name: status for _, _, name, status, _ in lines} == {
        "astronaut.png": "ok", "grace_hopper.jpg": "ok", "coffee_no_face.png": "failed", "corrupt.jpg": "failed"}
    assert lines[-1][4] == "00:00"
    # Blender's exporters chatter on stderr, not between the progress lines.
    assert "Progress:" not in result.stdout and "glTF" not in result.stdout

    summary = load_summary(output)
    assert summary["counts"] == {"ok": 2, "skipped": 0, "failed": 2, "pending": 0}
    assert summary["finished"] and summary["run"]["started_server"] and summary["run"]["blender"].startswith("3.")
    photos = by_key(summary)
    assert photos["coffee_no_face"]["error_code"] == "no_face"
    assert photos["corrupt"]["error_code"] == "bad_image" and photos["corrupt"]["error"]
    assert not (output / "coffee_no_face").exists() and not (output / "corrupt").exists()
    assert no_staging_left(output)
    # The local server was stopped.
    assert not tcp_in_use(summary["run"]["server"])

    for key in ("astronaut", "grace_hopper"):
        entry = photos[key]
        folder = output / key
        assert entry["status"] == "ok" and entry["faces"] == 1 and entry["vertices"] > 2000
        assert entry["error"] is None
        assert {"build", "blend", "glb", "obj", "ply", "stl", "handle"} <= set(entry["timings_s"])
        assert entry["server_timings_ms"]
        expected = {f"{key}{suffix}" for suffix in (".blend", ".glb", ".obj", ".mtl", ".ply", ".stl")} | {f"{key}_face0.png"}
        assert {Path(p).name for p in entry["outputs"]} == expected
        assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in entry["outputs"])
        assert outputs.read_manifest(folder)["formats"] == ALL_FORMATS.split(",")

        # .blend: one object per face, modifiers kept, images packed (opened by Debian's Blender).
        blend = inspect_blend(folder / f"{key}.blend")
        assert len(blend["objects"]) == 1 and blend["scenes"] == 1
        obj = blend["objects"][0]
        assert obj["name"] == key and obj["vertices"] == entry["vertices"]  # named like the panel names it
        assert {"SUBSURF", "DISPLACE"} <= set(obj["modifiers"]) and obj["evaluated_vertices"] > obj["vertices"]
        assert obj["uv_layers"] and obj["materials"] and obj["has_faceforge_prop"]
        metadata = obj["metadata"]  # meshdata.reconstruction_metadata, as the panel records it
        assert metadata["batch"] == 1 and Path(metadata["source_photo"]).stem == key
        assert metadata["server_version"] and metadata["device"] == "cpu" and metadata["faces_detected"] == 1
        assert blend["images"] and all(image["packed"] for image in blend["images"])

        # .glb: modifiers applied, texture embedded as PNG.
        glb = glb_summary(folder / f"{key}.glb")
        assert glb["meshes"] == 1 and glb["materials"] == 1 and glb["textures"] >= 1
        assert len(glb["images"]) == 1 and glb["images"][0]["png"] and glb["images"][0]["bytes"] > 10_000
        primitive = glb["primitives"][0]
        assert primitive["has_uv"] and primitive["count"] > entry["vertices"]  # subdivided
        size = [hi - lo for lo, hi in zip(primitive["min"], primitive["max"])]
        assert 0.08 < size[0] < 0.35 and 0.08 < size[1] < 0.45  # metres: a face, not a building

        # OBJ + MTL + PNG.
        mtl = (folder / f"{key}.mtl").read_text()
        assert f"map_Kd {key}_face0.png" in mtl
        obj_text = (folder / f"{key}.obj").read_text()
        assert f"mtllib {key}.mtl" in obj_text
        assert sum(1 for line in obj_text.splitlines() if line.startswith("v ")) > entry["vertices"]
        assert (folder / f"{key}_face0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # PLY with UVs; STL closed for printing, in millimetres.
        header = ply_header(folder / f"{key}.ply")
        assert header[0] == "ply" and any(line.startswith("element vertex") for line in header)
        assert any(line in ("property float s", "property float u") for line in header)
        stl = stl_summary(folder / f"{key}.stl")
        assert stl["triangles"] > 2 * entry["triangles"]
        assert 80 < max(stl["size"]) < 400  # millimetres


@needs_blender
def test_blender_batch_with_running_server_resumes_and_keeps_failing_bad_photos(photo_folder, server_address, tmp_path):
    """--server in Blender 3.4 with --jobs 1; a re-run skips the done photos (files untouched) and
    still reports the bad ones."""
    output = tmp_path / "out"
    args = ["--input", str(photo_folder), "--output", str(output), "--server", server_address, "--formats", "blend",
            "--jobs", "1", "--smooth", "2", "--detail", "0.001"]
    first = run_batch(blender_command(*args))
    assert first.returncode == Exit.FAILED
    summary = load_summary(output)
    assert summary["counts"]["ok"] == 2 and summary["run"]["started_server"] is False
    assert summary["run"]["max_in_flight"] == 1
    blend = output / "astronaut" / "astronaut.blend"
    stamp = blend.stat().st_mtime_ns

    second = run_batch(blender_command(*args))
    assert second.returncode == Exit.FAILED
    summary = load_summary(output)
    assert summary["counts"] == {"ok": 0, "skipped": 2, "failed": 2, "pending": 0}
    assert by_key(summary)["astronaut"]["outputs"] == [str(blend)]
    assert by_key(summary)["astronaut"]["faces"] == 1
    assert blend.stat().st_mtime_ns == stamp
    statuses = {name: status for _, _, name, status, _ in progress_lines(second.stdout)}
    assert statuses["astronaut.png"] == "skipped" and statuses["corrupt.jpg"] == "failed"


@needs_bpy
def test_python_bpy_batch_resume_add_formats_and_overwrite(one_photo_folder, server_address, tmp_path):
    """``python scripts/batch.py`` with bpy from PyPI: done photos are skipped, missing formats are
    added without touching existing files, --overwrite redoes everything."""
    output = tmp_path / "out"
    base = ["--input", str(one_photo_folder), "--output", str(output), "--server", server_address]
    first = run_batch(python_command(*base, "--formats", "blend,glb"))
    assert first.returncode == 0
    folder = output / "astronaut"
    summary = load_summary(output)
    assert summary["counts"]["ok"] == 1 and summary["run"]["blender"].startswith(("4.", "5."))
    blend = inspect_blend(folder / "astronaut.blend", blender=None)  # the bpy module reads its own file
    assert len(blend["objects"]) == 1 and {"SUBSURF", "DISPLACE"} <= set(blend["objects"][0]["modifiers"])
    assert all(image["packed"] for image in blend["images"])
    glb = glb_summary(folder / "astronaut.glb")
    assert glb["meshes"] == 1 and glb["images"][0]["png"]
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    again = run_batch(python_command(*base, "--formats", "blend,glb"))
    assert again.returncode == 0
    assert load_summary(output)["photos"][0]["status"] == "skipped"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps

    more = run_batch(python_command(*base, "--formats", "blend,glb,stl,obj"))
    assert more.returncode == 0
    entry = load_summary(output)["photos"][0]
    assert entry["status"] == "ok" and "add formats stl,obj" in entry["note"]
    for name, stamp in stamps.items():
        if name != outputs.MANIFEST:
            assert (folder / name).stat().st_mtime_ns == stamp, f"{name} was rewritten without --overwrite"
    assert (folder / "astronaut.stl").exists() and (folder / "astronaut.obj").exists()
    assert set(outputs.read_manifest(folder)["formats"]) == {"blend", "glb", "stl", "obj"}

    time.sleep(0.01)
    redo = run_batch(python_command(*base, "--formats", "glb", "--overwrite"))
    assert redo.returncode == 0
    assert load_summary(output)["photos"][0]["status"] == "ok"
    assert sorted(p.name for p in folder.iterdir()) == ["astronaut.glb", "astronaut_face0.png", outputs.MANIFEST]
    assert (folder / "astronaut.glb").stat().st_mtime_ns != stamps["astronaut.glb"]
    assert no_staging_left(output)


@needs_bpy
def test_python_bpy_batch_face_all_gives_one_object_per_face(two_faces_folder, server_address, tmp_path):
    output = tmp_path / "out"
    result = run_batch(python_command("--input", str(two_faces_folder), "--output", str(output), "--server",
                                      server_address, "--face", "all", "--formats", "blend,glb,obj", "--verbose"))
    assert result.returncode == 0
    stages = [float(m.group(1)) for m in re.finditer(r"^    pair\.\w+: .+ \((\d+)%\)$", result.stdout, re.M)]
    assert len(stages) >= 3 and stages == sorted(stages), result.stdout  # --verbose: the server's stages, in order
    entry = load_summary(output)["photos"][0]
    assert entry["status"] == "ok" and entry["faces"] == 2
    assert [face["index"] for face in entry["face_details"]] == [0, 1]
    folder = output / "pair"
    blend = inspect_blend(folder / "pair.blend", blender=None)
    objects = sorted(blend["objects"], key=lambda o: o["name"])
    assert [o["name"] for o in objects] == ["pair.face0", "pair.face1"]  # the panel's names
    assert abs(objects[0]["location"][0] - objects[1]["location"][0]) > 0.1  # side by side, not overlapping
    glb = glb_summary(folder / "pair.glb")
    assert glb["meshes"] == 2 and len(glb["images"]) == 2
    mtl = (folder / "pair.mtl").read_text()
    assert "map_Kd pair_face0.png" in mtl and "map_Kd pair_face1.png" in mtl


@needs_blender
def test_blender_batch_unreachable_server_exits_5(one_photo_folder, tmp_path):
    output = tmp_path / "out"
    dead = free_address()
    result = run_batch(blender_command("--input", str(one_photo_folder), "--output", str(output), "--server", dead),
                       timeout=120)
    assert result.returncode == Exit.SERVER
    summary = load_summary(output)
    assert summary["counts"]["failed"] == 1 and summary["photos"][0]["error_code"] == "unreachable"
    assert "error:" in result.stdout


@needs_blender
def test_blender_batch_usage_errors_exit_2(tmp_path):
    result = run_batch(blender_command("--input", str(tmp_path), "--output", str(tmp_path / "o"), "--formats", "usdz"),
                       timeout=120)
    assert result.returncode == Exit.USAGE and "unknown format" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_batch(blender_command("--input", str(empty), "--output", str(tmp_path / "o")), timeout=120)
    assert result.returncode == Exit.USAGE and "no photos found" in result.stdout


@needs_blender
def test_blender_batch_stops_its_server_on_sigint(photo_folder, tmp_path):
    """Ctrl-C while photos are in flight: the started server is stopped, the summary says so, exit 130."""
    output = tmp_path / "out"
    process, lines = start_until_ready(blender_command("--input", str(photo_folder), "--output", str(output),
                                                      "--device", "cpu"))
    try:
        assert any(" ready " in line for line in lines), "".join(lines)
    except BaseException:
        process.kill()
        raise
    summary = interrupt(process, lines, output, timeout=60)  # also: exit 130, the server gone
    assert summary["counts"]["pending"] + summary["counts"]["ok"] + summary["counts"]["failed"] == 4
    assert no_staging_left(output)
