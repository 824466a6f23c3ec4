"""`python -m inference_server` as a user runs it: files written, JSON summary, exit codes, clean errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO
from .test_pipeline import composite


def cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "inference_server", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def photos(tmp_path, astronaut_png, no_face_png, corrupt_bytes, astronaut_rgb, grace_hopper_jpg):
    files = {"astronaut": astronaut_png, "cup": no_face_png, "corrupt": corrupt_bytes,
             "pair": composite(astronaut_rgb, grace_hopper_jpg)}
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.{'jpg' if name == 'pair' else 'png'}"
        paths[name].write_bytes(data)
    return paths


def read_obj(path):
    lines = path.read_text().splitlines()
    return (sum(line.startswith("v ") for line in lines), sum(line.startswith("vt ") for line in lines),
            sum(line.startswith("f ") for line in lines))


def test_in_process_obj_with_json_summary(photos, tmp_path):
    out = tmp_path / "astro.obj"
    run = cli("reconstruct", photos["astronaut"], "-o", out, "--json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", "no library chatter on the user's terminal"
    summary = json.loads(run.stdout)
    (face,) = summary["faces"]
    assert face["vertices"] >= 8000 and summary["faces_detected"] == 1
    assert {"load", "detect", "landmarks", "depth", "mesh"} <= set(summary["timings_ms"])
    vertices, uvs, triangles = read_obj(out)
    assert vertices == uvs == face["vertices"] and triangles == face["triangles"]
    assert "map_Kd astro_texture.png" in (tmp_path / "astro.mtl").read_text()
    assert (tmp_path / "astro_texture.png").stat().st_size > 10_000


def test_all_faces_through_a_running_server(photos, tmp_path, server_address):
    run = cli("reconstruct", photos["pair"], "-o", tmp_path / "pair.ply", "--face", "all", "--server", server_address,
              "--json", "--resolution", "50")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert [f["index"] for f in summary["faces"]] == [0, 1]
    for index, face in enumerate(summary["faces"]):
        ply = tmp_path / f"pair_face{index}.ply"
        header = ply.read_bytes().split(b"end_header\n")[0].decode()
        assert f"element vertex {face['vertices']}" in header and f"element face {face['triangles']}" in header


def test_npz_keeps_every_protocol_array(photos, tmp_path, server_address):
    run = cli("reconstruct", photos["astronaut"], "-o", tmp_path / "a.npz", "--server", server_address)
    assert run.returncode == 0, run.stderr
    arrays = np.load(tmp_path / "a.npz")
    assert {"vertices", "faces", "uvs", "texture", "detail", "depth", "mask"} <= set(arrays.files)


@pytest.mark.parametrize("name, code, words", [("cup", 4, "no face"), ("corrupt", 3, "image")])
def test_bad_photos_exit_with_one_line(photos, name, code, words, server_address):
    run = cli("reconstruct", photos[name], "--server", server_address)
    assert run.returncode == code
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in run.stderr


def test_no_face_in_process_is_exactly_one_line(photos):
    run = cli("reconstruct", photos["cup"])
    assert run.returncode == 4 and run.stderr.strip().splitlines() == [f"error: {photos['cup']}: no face found in the image"]


def test_missing_file_unreachable_server_and_bad_suffix(tmp_path, photos):
    run = cli("reconstruct", tmp_path / "nope.jpg")
    assert run.returncode == 3 and "cannot read" in run.stderr and "Traceback" not in run.stderr
    run = cli("reconstruct", photos["astronaut"], "--server", "tcp://127.0.0.1:9", "--timeout", "5")
    assert run.returncode == 5 and "running" in run.stderr and "Traceback" not in run.stderr
    run = cli("reconstruct", photos["astronaut"], "-o", tmp_path / "x.fbx")
    assert run.returncode == 2 and "unsupported output" in run.stderr


def test_reconstruct_writes_a_glb_a_head_with_its_expressions_as_morph_targets(photos, tmp_path, head_server,
                                                                                  server_address):
    from addon.writers.glb import read_glb

    from .test_glb import _vectors

    run = cli("reconstruct", photos["astronaut"], "-o", tmp_path / "head.glb", "--server", head_server.address,
              "--geometry", "head")
    assert run.returncode == 0, run.stderr
    assert cli("reconstruct", photos["astronaut"], "-o", tmp_path / "head.npz", "--server", head_server.address,
               "--geometry", "head").returncode == 0
    reply = np.load(tmp_path / "head.npz")
    document, binary = read_glb(tmp_path / "head.glb")
    (mesh,) = document["meshes"]
    names = mesh["extras"]["targetNames"]
    assert len(names) == 53 and "jawOpen" in names and len(mesh["primitives"]) > 1  # a material per head part
    np.testing.assert_allclose(mesh["weights"], reply["expression_weights"], atol=1e-6)
    attributes = mesh["primitives"][0]["attributes"]
    y_up = _vectors(document, binary, attributes["POSITION"])
    positions = np.stack([y_up[:, 0], -y_up[:, 2], y_up[:, 1]], 1)  # back to Blender axes
    assert len(positions) >= len(reply["vertices"])  # a vertex per (vertex, UV) pair
    np.testing.assert_allclose(positions.min(0), reply["vertices"].min(0), atol=1e-5)  # the neutral head
    np.testing.assert_allclose(positions.max(0), reply["vertices"].max(0), atol=1e-5)
    jaw = _vectors(document, binary, mesh["primitives"][0]["targets"][names.index("jawOpen")]["POSITION"])
    assert np.isclose(np.abs(jaw).max(), np.abs(reply["expression_deltas"]).max(axis=(1, 2))[names.index("jawOpen")],
                      atol=1e-5)
    normals = _vectors(document, binary, attributes["NORMAL"])
    for axis, sign in ((2, 1), (1, 1), (2, -1)):  # the nose tip faces forward (+Z), the crown up, the back of the head back
        extreme = np.argmax(sign * y_up[:, axis])
        assert sign * normals[extreme, axis] > 0.7, (axis, sign, normals[extreme])
    run = cli("reconstruct", photos["astronaut"], "-o", tmp_path / "face.glb", "--server", server_address)
    assert run.returncode == 0, run.stderr
    document, _ = read_glb(tmp_path / "face.glb")
    assert "targets" not in document["meshes"][0]["primitives"][0] and document["images"][0]["mimeType"] == "image/png"
