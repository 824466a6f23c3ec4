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
