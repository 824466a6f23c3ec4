"""The batch on Ray (``--ray``): a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``).

Each node is a raylet of its own, with its own worker processes. The batch is a separate process that
joins the cluster as a driver. The photos are real: the astronaut and Grace Hopper, variants of both,
a corrupt file and a photo with no face.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from addon.writers import glb
from tests.batch_fixtures import BATCH, load_summary, run_batch
from tests.conftest import REPO

ray = pytest.importorskip("ray", reason="the Ray batch needs `pip install ray` (requirements-dev.txt has it)")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut_png, grace_hopper_jpg, no_face_png, corrupt_bytes) -> Path:
    """20 files: two real photos and 16 variants (mirror, crops, turns, rescales, re-encodes, relit), plus a
    corrupt JPEG and a photo with no face."""
    folder = tmp_path_factory.mktemp("ray-photos")
    for name, data in (("astronaut", astronaut_png), ("grace", grace_hopper_jpg)):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        width, height = image.size
        variants = {
            "": image, "mirror": ImageOps.mirror(image), "turn_left": image.rotate(8, expand=False),
            "turn_right": image.rotate(-8, expand=False), "small": image.resize((width * 7 // 10, height * 7 // 10)),
            "crop": image.crop((width // 10, 0, width, height * 9 // 10)),
            "darker": ImageEnhance.Brightness(image).enhance(0.7), "low_quality": image}
        for suffix, variant in variants.items():
            quality = 40 if suffix == "low_quality" else 90
            (folder / f"{name}{'_' + suffix if suffix else ''}.jpg").write_bytes(_jpeg(variant, quality))
    (folder / "astronaut_original.png").write_bytes(astronaut_png)
    (folder / "grace_original.jpg").write_bytes(grace_hopper_jpg)
    (folder / "corrupt.jpg").write_bytes(corrupt_bytes)
    (folder / "coffee_no_face.png").write_bytes(no_face_png)
    assert len(list(folder.iterdir())) == 20
    return folder


@pytest.fixture(scope="module")
def cluster(head_data_dir):
    """A head node and a worker node, 4 logical CPUs each (actors are over-subscribed on the 2 real cores, so
    the survivor has room to restart a dead node's actors). Their workers find the head model and this checkout."""
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.get(key) for key in ("FACEFORGE_DATA", "PYTHONPATH")}
    os.environ.update(FACEFORGE_DATA=str(head_data_dir), PYTHONPATH=str(REPO))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ray_command(photos: Path, output: Path, address: str) -> list:
    return [sys.executable, str(BATCH), "--input", str(photos), "--output", str(output), "--ray", address,
            "--cpu-actors", "2", "--writer-actors", "2", "--formats", "blend,glb"]


def _positions(path: Path) -> np.ndarray:
    """Every mesh's POSITION data from a .glb, concatenated."""
    document, binary = glb.read_glb(path)
    arrays = []
    for mesh in document["meshes"]:
        for primitive in mesh["primitives"]:
            accessor = document["accessors"][primitive["attributes"]["POSITION"]]
            view = document["bufferViews"][accessor["bufferView"]]
            start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
            arrays.append(np.frombuffer(binary, np.float32, accessor["count"] * 3, start).reshape(-1, 3))
    return np.concatenate(arrays)


def _by_name(summary: dict) -> dict:
    return {Path(photo["photo"]).name: photo for photo in summary["photos"]}


def test_the_ray_batch_writes_what_the_plain_batch_writes_on_two_nodes(photos, cluster, head_data_dir, tmp_path):
    head, _worker = cluster
    env = {"FACEFORGE_DATA": str(head_data_dir), "PYTHONPATH": str(REPO)}
    plain = run_batch([sys.executable, str(BATCH), "--input", str(photos), "--output", str(tmp_path / "plain"),
                       "--formats", "blend,glb", "--workers", "1"], env=env)
    started = time.perf_counter()
    on_ray = run_batch(_ray_command(photos, tmp_path / "ray", head.address), env=env)
    print(f"ray batch: {time.perf_counter() - started:.1f} s")
    assert plain.returncode == on_ray.returncode == 1, on_ray.stderr[-3000:]  # 1: some photos failed (the bad ones)

    ours, theirs = _by_name(load_summary(tmp_path / "ray")), _by_name(load_summary(tmp_path / "plain"))
    assert set(ours) == set(theirs) and len(ours) == 20
    assert {name: photo["status"] for name, photo in ours.items()} == \
        {name: photo["status"] for name, photo in theirs.items()}
    assert ours["corrupt.jpg"]["error_code"] == "bad_image" and ours["coffee_no_face.png"]["error_code"] == "no_face"
    assert sum(photo["status"] == "ok" for photo in ours.values()) == 18
    for name, photo in ours.items():
        if photo["status"] != "ok":
            continue
        assert sorted(Path(p).name for p in photo["outputs"]) == sorted(Path(p).name for p in theirs[name]["outputs"])
        assert photo["vertices"] == theirs[name]["vertices"]
        glb_path = next(Path(p) for p in photo["outputs"] if p.endswith(".glb"))
        plain_glb = next(Path(p) for p in theirs[name]["outputs"] if p.endswith(".glb"))
        np.testing.assert_allclose(_positions(glb_path), _positions(plain_glb), atol=1e-6, err_msg=name)

    run = load_summary(tmp_path / "ray")["run"]
    assert run["ray"]["nodes"] == 2 and run["ray"]["model_actors"] == 2
    assert len(run["ray"]["photos_by_node"]["model"]) == 2  # both nodes reconstructed
    assert len(run["ray"]["photos_by_node"]["writer"]) == 2  # and both wrote
    again = run_batch(_ray_command(photos, tmp_path / "ray", head.address), env=env)
    summary = load_summary(tmp_path / "ray")
    assert again.returncode == 1 and sum(photo["status"] == "skipped" for photo in summary["photos"]) == 18
    assert "0 ok, 18 skipped, 2 failed" in again.stdout  # a re-run redoes nothing that worked


def test_a_node_killed_mid_run_loses_no_photo(photos, cluster, head_data_dir, tmp_path):
    head, worker = cluster
    env = dict(os.environ, FACEFORGE_DATA=str(head_data_dir), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(_ray_command(photos, tmp_path / "out", head.address), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, killed = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if not killed.is_set() and sum(": ok (" in seen for seen in lines) >= 3:
                killed.set()
                head.remove_node(worker, allow_graceful=False)  # the node's raylet and its workers are killed
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=900)
    finally:
        process.kill()
    reader.join(10)
    print("\n".join(lines[-30:]))
    assert killed.is_set(), "the run ended before a node could be killed"
    summary = load_summary(tmp_path / "out")
    statuses = {Path(photo["photo"]).name: (photo["status"], photo.get("error_code")) for photo in summary["photos"]}
    assert len(statuses) == 20 and code == 1
    assert statuses["corrupt.jpg"] == ("failed", "bad_image") and statuses["coffee_no_face.png"] == ("failed", "no_face")
    good = {name: status for name, status in statuses.items() if name not in ("corrupt.jpg", "coffee_no_face.png")}
    assert all(status == ("ok", None) or status == ("failed", "worker_lost") for status in good.values()), good
    done = sum(status == ("ok", None) for status in good.values())
    print(f"{done} of 18 good photos written after losing a node; the rest reported worker_lost")
    assert done >= 15  # each lost photo was tried again on the surviving node
    assert not [photo for photo in summary["photos"] if photo["status"] == "pending"] and summary["finished"]


def test_the_cluster_example_passes_ray_ups_checks():
    """docs/ray-cluster.yaml, which the README shows, is filled out and checked as `ray up` does it (Ray's own
    schema and rules); the same file with a misspelt key is refused, so the check can fail."""
    import yaml
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (REPO / "docs" / "ray-cluster.yaml").read_text()
    config = prepare_config(yaml.safe_load(text))
    validate_config(config)
    assert config["provider"]["worker_ips"] == ["10.0.0.2", "10.0.0.3"] and config["max_workers"] == 2
    with pytest.raises(ValidationError, match="head_start_ray_command"):
        validate_config(prepare_config(yaml.safe_load(text.replace("head_start_ray_commands", "head_start_ray_command"))))


def test_gpu_actors_take_the_clusters_gpus_and_say_why_they_cannot_start(astronaut_png, head_data_dir, tmp_path,
                                                                          monkeypatch):
    """``--gpus-per-actor``: a node with two GPUs (logical ones here) gets four half-GPU model actors. Where torch
    has no CUDA they cannot start, and the batch says so in one line instead of a Ray traceback; a share the
    cluster cannot give is refused before any actor starts. With CUDA (a GPU machine), the photo is done."""
    import torch
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("FACEFORGE_DATA", str(head_data_dir))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "astronaut.png").write_bytes(astronaut_png)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    try:
        def batch(share: str, output: str) -> subprocess.CompletedProcess:
            command = [sys.executable, str(BATCH), "--input", str(tmp_path / "in"), "--output", str(tmp_path / output),
                       "--ray", cluster.address, "--gpus-per-actor", share, "--writer-actors", "1"]
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))

        refused = batch("4", "refused")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "--gpus-per-actor 4: the cluster has 2 GPU(s)" in refused.stdout
        assert "starting" not in refused.stdout
        halves = batch("0.5", "halves")
    finally:
        cluster.shutdown()
    print(halves.stdout)
    assert "starting 4 model actor(s) (0.5 GPU each) and 1 writer(s)" in halves.stdout
    if torch.cuda.is_available():
        assert halves.returncode == 0 and load_summary(tmp_path / "halves")["photos"][0]["status"] == "ok"
    else:
        assert halves.returncode == 5
        assert "error: an actor could not start: " in halves.stdout and "sees no CUDA GPUs" in halves.stdout
        assert "Traceback" not in halves.stdout
        assert "sees no CUDA GPUs" in load_summary(tmp_path / "halves")["run"]["error"]
