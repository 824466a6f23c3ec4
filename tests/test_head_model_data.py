"""The head model's data path: upstream OBJs -> compact .npz, install / fetch / list, as a user runs them.

Fetching is tested against a real HTTP server on 127.0.0.1 serving an archive built here; no test
contacts an outside address.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inference_server.__main__ import main
from inference_server.head import convert, store
from inference_server.head.model import HeadModel
from tests import ict_fixtures as ict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def shared_npz() -> Path:
    return ict.require_ict()


@pytest.fixture(scope="module")
def installed_from_folder(shared_npz, tmp_path_factory):
    """`model install FOLDER` on an upstream-layout folder: real sample OBJs plus stand-in links."""
    root = tmp_path_factory.mktemp("folder_install")
    folder = ict.folder_with_stand_ins(root / "ICT-FaceKit" / "FaceXModel")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEFORGE_DATA", str(root / "data"))
        started = time.perf_counter()
        path = store.install(folder, log=lambda line: None)
        seconds = time.perf_counter() - started
        licence = (path.parent / store.LICENCE_FILE).read_text()
    return path, seconds, licence


def test_sample_objs_convert_to_the_shared_arrays(installed_from_folder, shared_npz):
    path, seconds, licence = installed_from_folder
    print(f"converted and installed the 155-file folder in {seconds:.1f} s")
    with np.load(path) as mine, np.load(shared_npz) as shared:
        assert mine.files == shared.files, "exactly the shared file's keys, in its order"
        for key in shared.files:
            if key in ("id_deltas", "exp_deltas"):
                continue
            assert mine[key].dtype == shared[key].dtype and np.array_equal(mine[key], shared[key]), key
        for i in ict.SAMPLE_IDENTITIES:
            np.testing.assert_allclose(mine["id_deltas"][i], shared["id_deltas"][i], atol=1e-6)
        names = list(shared["exp_names"])
        for name in ict.SAMPLE_EXPRESSIONS:
            k = names.index(name)
            np.testing.assert_allclose(mine["exp_deltas"][k], shared["exp_deltas"][k], atol=1e-6)
            assert np.abs(mine["exp_deltas"][k].astype(np.float32)).max() > 1e-3, f"{name} really moves vertices"
    assert "USC Institute for Creative Technologies" in licence and "MIT" in licence


def test_conversion_keeps_the_upstream_vertex_order(installed_from_folder):
    """Vertex i of the .npz is record i of the OBJ: spot-check raw records, not the converter's own parse."""
    records = [line.split()[1:4] for line in (ict.UPSTREAM_SAMPLE / convert.NEUTRAL).read_text().splitlines()
               if line.startswith("v ")]
    model = HeadModel.load(installed_from_folder[0])
    for i in (0, 1, 9408, 13294, 21451, 26718):
        np.testing.assert_allclose(model.vertices[i], np.array(records[i], float) / 100, rtol=1e-6)
    assert model.face_material.max() == len(model.material_names) - 1


def test_a_folder_missing_expressions_is_refused_naming_them(shared_npz, tmp_path, data_dir, capsys):
    left_out = ("cheekPuff_L.obj", "noseSneer_R.obj")
    folder = ict.folder_with_stand_ins(tmp_path / "FaceXModel", leave_out=left_out)
    assert main(["model", "install", str(folder)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "2 expression files" in err[0], err
    assert all(name in err[0] for name in left_out)
    assert store.find_model() is None and not list(data_dir.rglob("*.npz")), "nothing half-installed"


def test_incomplete_or_foreign_zips_are_refused(shared_npz, tmp_path, data_dir, capsys):
    sample = {p.name: p.read_bytes() for p in ict.UPSTREAM_SAMPLE.iterdir()}
    partial = ict.write_repository_zip(tmp_path / "partial.zip", sample, "abc")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("other-project/README.md", b"hello")
    for archive, message in ((partial, "missing 98 identity files"), (foreign, "no FaceXModel/generic_neutral_mesh.obj")):
        assert main(["model", "install", str(archive)]) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert store.find_model() is None


def test_install_npz_then_list(shared_npz, data_dir, capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert "no head model installed" in out and "model fetch" in out and "model install" in out
    assert main(["model", "install", str(shared_npz)]) == 0
    out = capsys.readouterr().out
    assert str(store.default_model_path()) in out and "MIT" in out and "26719 vertices" in out
    assert store.find_model() == store.default_model_path()
    assert store.default_model_path().read_bytes() == shared_npz.read_bytes()
    listed = subprocess.run([sys.executable, "-m", "inference_server", "model", "list"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "26719 vertices, 100 identity modes, 53 expressions" in listed.stdout


@pytest.mark.parametrize("content", [b"not a model", None])
def test_bad_sources_are_refused_with_one_line(tmp_path, data_dir, capsys, content):
    if content is None:  # an .npz that lacks the model's arrays
        source = tmp_path / "other.npz"
        np.savez(source, vertices=np.zeros((3, 3)))
    else:
        source = tmp_path / "model.bin"
        source.write_bytes(content)
    assert main(["model", "install", str(source)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(source) in err[0], err
    assert store.find_model() is None


@pytest.mark.parametrize("kind", ["device", "fifo", "bad crc"])
def test_endless_blocking_or_damaged_sources_are_refused_with_one_line(shared_npz, tmp_path, data_dir, capsys, kind):
    """``/dev/zero`` used to grow memory without bound, a FIFO to block for ever, a damaged .npz
    member (bad CRC) to end in a traceback: all are now one ``error:`` line and exit 3."""
    import os

    if kind == "device":
        source = Path("/dev/zero")
    elif kind == "fifo":
        source = tmp_path / "model.zip"
        os.mkfifo(source)
    else:
        source = tmp_path / "damaged.npz"
        data = bytearray(shared_npz.read_bytes())
        with zipfile.ZipFile(shared_npz) as archive:
            entry = archive.getinfo("vertices.npy")
        data[entry.header_offset + 30 + len(entry.filename) + 200] ^= 0xFF  # one byte inside its data
        source.write_bytes(bytes(data))
    assert main(["model", "install", str(source)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    said = {"device": "not a regular file", "fifo": "not a regular file", "bad crc": "is damaged"}[kind]
    assert len(err) == 1 and err[0].startswith("error:") and said in err[0], err
    assert store.find_model() is None


def test_a_licence_link_is_not_followed(shared_npz, tmp_path, data_dir, capsys):
    """A LICENSE beside the model that is a link (here to an owner-only file) is not copied into the
    world-readable installed licence; the model's own notice is written instead."""
    secret = tmp_path / "secret.txt"
    secret.write_text("owner-only text\n")
    secret.chmod(0o600)
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "model.npz").write_bytes(shared_npz.read_bytes())
    (folder / "LICENSE").symlink_to(secret)
    assert main(["model", "install", str(folder / "model.npz")]) == 0
    licence = (store.default_model_path().parent / store.LICENCE_FILE).read_text()
    assert "owner-only" not in licence and "MIT" in licence


@pytest.fixture(scope="module")
def archive_server(shared_npz, tmp_path_factory):
    """The pinned archive's layout rebuilt from the shared model, and a tampered copy."""
    folder = tmp_path_factory.mktemp("archives")
    texts = ict.upstream_obj_texts(shared_npz)
    ict.write_repository_zip(folder / f"{store.PINNED_COMMIT}.zip", texts, store.PINNED_COMMIT)
    texts["identity007.obj"] = texts["identity001.obj"]  # a mode swapped for another
    ict.write_repository_zip(folder / "tampered.zip", texts, store.PINNED_COMMIT)
    server = ict.ArchiveServer(folder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_fetch_downloads_verifies_and_installs(archive_server, data_dir, capsys):
    url = f"{archive_server.base}/{store.PINNED_COMMIT}.zip"
    started = time.perf_counter()
    assert main(["model", "fetch", "--url", url]) == 0
    print(f"fetched, converted, verified and installed in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    out = capsys.readouterr().out
    assert f"downloading {url}" in out and "installed ICT-FaceKit head model" in out
    model = HeadModel.load(store.find_model())
    store.verify(model)  # the fingerprint holds on what was installed, not only during the fetch
    assert "MIT" in (store.models_dir() / store.LICENCE_FILE).read_text()
    assert not [p for p in store.models_dir().iterdir() if p.name.startswith(".")], "download scratch removed"


def test_a_tampered_archive_fails_verification(archive_server, data_dir, capsys):
    assert main(["model", "fetch", "--url", f"{archive_server.base}/tampered.zip"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match ICT-FaceKit" in err[0] and "id_norm" in err[0], err
    assert store.find_model() is None


@pytest.mark.parametrize("path, timeout, message", [("/missing.zip", 10, "HTTP 404"), ("/stall", 0.5, "stalled")])
def test_network_failures_are_clear(archive_server, data_dir, capsys, path, timeout, message):
    started = time.perf_counter()
    assert main(["model", "fetch", "--url", archive_server.base + path, "--timeout", str(timeout)]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert time.perf_counter() - started < 10
    assert store.find_model() is None


def test_fetch_refuses_non_http_addresses(data_dir, capsys):
    assert main(["model", "fetch", "--url", "file:///etc/passwd"]) == 2
    assert capsys.readouterr().err.startswith("error: file:///etc/passwd is not an http(s) address")


def test_missing_model_message_names_both_commands(data_dir):
    message = store.missing_model_message()
    assert "python -m inference_server model install" in message and "python -m inference_server model fetch" in message
    assert str(data_dir) in message


def _damaged(arrays: dict, name: str, change) -> dict:
    damaged = dict(arrays)
    damaged[name] = change(np.array(arrays[name]))
    return damaged


def _set(index, value):
    def change(array):
        array[index] = value
        return array
    return change


DAMAGES = {  # what a damaged or hostile .npz may hold, and the reason the refusal gives
    "nan vertices": ("vertices", _set((5, 1), np.nan), "vertices holds NaN or infinite values"),
    "inf expression delta": ("exp_deltas", _set((3, 10, 2), np.inf), "exp_deltas holds NaN or infinite values"),
    "nan identity mode": ("id_deltas", _set((0, 0, 0), np.nan), "id_deltas holds NaN or infinite values"),
    "vertex_part out of range": ("vertex_part", _set(7, 200), "vertex_part indexes outside [0, 17)"),
    "face_material out of range": ("face_material", _set(0, 99), "face_material indexes outside [0, 12)"),
    "negative face index": ("faces", _set((0, 0), -1), "faces indexes outside [0, 26719)"),
    "face_uv out of range": ("face_uv", _set((4, 2), 10 ** 6), "face_uv indexes outside"),
    "float faces": ("faces", lambda a: a.astype(np.float32), "faces must be a non-empty 2-D array of integers"),
    "float mask": ("face_mask", lambda a: a.astype(np.float32), "face_mask must be a non-empty 1-D array of booleans"),
    "67 landmarks": ("landmarks68", lambda a: a[:67], "landmarks68 has shape (67,), expected (68,)"),
    "expression names short": ("exp_names", lambda a: a[:52], "exp_deltas has shape (53, 26719, 3), expected (52,"),
}


@pytest.fixture(scope="module")
def shared_arrays(shared_npz) -> dict:
    with np.load(shared_npz) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_model_with_unusable_arrays_is_refused_at_install_naming_why(shared_arrays, tmp_path, data_dir, capsys,
                                                                        damage):
    """8 of 10 such files used to install with exit 0 and then answer ``internal`` to every head request
    (or, float faces and out-of-range materials, stop the server from starting)."""
    name, change, said = DAMAGES[damage]
    source = tmp_path / "damaged.npz"
    np.savez(source, **_damaged(shared_arrays, name, change))
    assert main(["model", "install", str(source)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and said in err[0], err
    assert store.find_model() is None


def test_a_damaged_model_put_in_place_by_hand_stops_serve_and_reconstruct_with_one_line(shared_arrays, data_dir,
                                                                                      astronaut_png, tmp_path):
    """Checked at every load too: the file under the data folder is not trusted because install wrote it."""
    store.models_dir().mkdir(parents=True)
    name, change, said = DAMAGES["nan vertices"]
    with open(store.default_model_path(), "wb") as target:
        np.savez(target, **_damaged(shared_arrays, name, change))
    photo = tmp_path / "photo.png"
    photo.write_bytes(astronaut_png)
    for command in (["serve", "--bind", "tcp://127.0.0.1:0"], ["reconstruct", str(photo), "-o", str(tmp_path / "x.obj")]):
        done = subprocess.run([sys.executable, "-m", "inference_server", *command], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 6 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert len(errors) == 1 and said in errors[0] and "install it again" in errors[0], done.stderr[-2000:]
