"""Learned depth in the product: a depth checkpoint installed with the CLI, a live server fusing a
(randomly initialised, small) MiDaS network into the face, the batch asking for it, and the
requests that must be refused.

The networks' weights are random (no real checkpoint can be downloaded here), so these tests check
the wiring and the guarantees, not the quality: the fused depth must differ from the landmark depth,
stay finite inside the mask, and the mesh must keep every guarantee of tests/test_pipeline.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from addon.wire.client import Client
from addon.wire.errors import ErrorCode, Exit, ProtocolError
from inference_server.__main__ import main
from inference_server.config import ReconstructionConfig
from inference_server.depth import ARCHITECTURES, build_network, installed, to_upstream
from inference_server.depth.backend import DepthNetworks
from tests import test_pipeline as guarantees
from tests.batch_fixtures import by_key, load_summary, needs_bpy, python_command, run_batch
from tests.conftest import start_server

ARCH = "midas_v21_small_256"
# Random weights: a seed whose network happens to rise toward the camera on both test photos, so its
# alignment to the landmark surface is usable (a network that falls is rightly ignored).
INSTALLED_SEED, OPERATOR_SEED = 1, 2
NETWORK = {"depth_backend": "network", "depth_model": ARCH}


def random_checkpoint(path: Path, seed: int) -> Path:
    """A random network saved under the upstream key names, like the published file."""
    torch.manual_seed(seed)
    arch = ARCHITECTURES[ARCH]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_upstream(build_network(arch).state_dict(), arch), path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("depth")
    return {"upstream": random_checkpoint(root / "upstream" / f"{ARCH}.pt", INSTALLED_SEED),
            "operator": random_checkpoint(root / "operator" / "operators_own.pth", OPERATOR_SEED), "root": root}


@pytest.fixture(scope="module")
def depth_server(checkpoints):
    """A server whose data folder holds the installed checkpoint, started with the operator's own file."""
    data = checkpoints["root"] / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FACEFORGE_DATA", str(data))
        assert main(["model", "install", str(checkpoints["upstream"])]) == Exit.OK
        server = start_server(checkpoints["root"] / "server.log", "--depth-model", str(checkpoints["operator"]))
    try:
        yield server
    finally:
        server.stop()


def reconstruct(server, photo: bytes, options: dict):
    stages = []
    with Client(server.address, timeout=300) as client:
        reply = client.reconstruct(photo, options, on_progress=lambda report: stages.append(report["stage"]))
    assert len(reply.faces) == 1
    return reply.faces[0], stages


@pytest.fixture(scope="module")
def landmark_face(depth_server, astronaut_png):
    return reconstruct(depth_server, astronaut_png, {})[0]


def assert_mesh_guarantees(face) -> None:
    for check in (guarantees.test_mesh_size_and_index_validity, guarantees.test_metric_scale_and_axes,
                  guarantees.test_triangles_face_the_camera, guarantees.test_no_spikes_and_bounded_edges,
                  guarantees.test_rim_follows_a_smooth_contour, guarantees.test_uvs_and_texture_alignment,
                  guarantees.test_depth_map_and_mask):
        check(face)


def test_server_fuses_the_installed_network(depth_server, astronaut_png, landmark_face):
    face, stages = reconstruct(depth_server, astronaut_png, NETWORK)
    network = face.meta["depth_network"]
    assert face.meta["depth_backend"] == "network" and network["used"], network
    assert network["name"] == ARCH and network["architecture"] == ARCH and network["alignment"]["usable"]
    assert network["alignment"]["scale"] > 0 and network["alignment"]["residual_m"] > 0
    assert landmark_face.meta["depth_backend"] == "landmarks" and "depth_network" not in landmark_face.meta
    assert stages.index("depth") < stages.index("depth_network") < stages.index("mesh")

    fused, prior, mask = face.arrays["depth"], landmark_face.arrays["depth"], face.arrays["mask"]
    assert np.array_equal(mask, landmark_face.arrays["mask"])
    assert np.isfinite(fused[mask]).all() and (fused[~mask] == 0).all()
    change = np.abs(fused - prior)[mask]
    assert change.max() > 0.001, "the network's detail reaches the depth map"
    assert change.mean() < 0.005, "the landmark surface keeps the shape"
    assert not np.allclose(face.arrays["detail"], landmark_face.arrays["detail"]), "detail from the network"
    assert np.isfinite(face.arrays["detail"]).all()
    assert_mesh_guarantees(face)


def test_operator_model_and_fuse_weight(depth_server, astronaut_png, landmark_face):
    """No depth_model in the request: the server's own (``serve --depth-model FILE``), loaded at start."""
    info = depth_server.info
    assert info["depth_backends"] == ["landmarks", "cues", "network"] and info["depth_networks"] == {ARCH: ARCH}
    assert info["depth_model"].endswith("operators_own.pth") and info["depth_loaded"] == ARCH
    face, _ = reconstruct(depth_server, astronaut_png, {"depth_backend": "network"})
    assert face.meta["depth_network"]["name"] == "operators_own" and face.meta["depth_backend"] == "network"
    assert_mesh_guarantees(face)
    off, _ = reconstruct(depth_server, astronaut_png, {"depth_backend": "network", "depth_fuse_weight": 0.0})
    assert off.meta["depth_backend"] == "landmarks" and not off.meta["depth_network"]["used"]
    np.testing.assert_array_equal(off.arrays["depth"], landmark_face.arrays["depth"])


@pytest.mark.parametrize("options,code,words", [
    ({"depth_backend": "network", "depth_model": "depth_anything_v2_vitl"}, ErrorCode.NO_MODEL,
     ["not installed", ARCH, "model install CHECKPOINT"]),
    ({"depth_backend": "network", "depth_model": "/etc/passwd"}, ErrorCode.BAD_REQUEST, ["paths are refused"]),
    ({"depth_backend": "network", "depth_model": "../depth/x"}, ErrorCode.BAD_REQUEST, ["paths are refused"]),
    ({"depth_backend": "networks"}, ErrorCode.BAD_REQUEST, ["landmarks | cues | network"]),
    ({"depth_fuse_weight": 1.5}, ErrorCode.BAD_REQUEST, ["outside [0, 1]"]),
])
def test_refused_requests(depth_server, astronaut_png, options, code, words):
    with pytest.raises(ProtocolError) as info:
        reconstruct(depth_server, astronaut_png, options)
    assert info.value.code == code and all(word in info.value.message for word in words), info.value.message


def test_network_backend_without_any_checkpoint_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path))
    networks = DepthNetworks(torch.device("cpu"))
    assert networks.info()["depth_backends"] == ["landmarks", "cues"]   # the shipped cues network needs no install
    assert networks.checkpoint(ReconstructionConfig()) is None
    with pytest.raises(ProtocolError) as info:
        networks.checkpoint(ReconstructionConfig(depth_backend="network"))
    assert info.value.code == ErrorCode.NO_MODEL and "python -m inference_server model install CHECKPOINT" in info.value.message


def test_model_install_and_list_both_kinds(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path / "data"))
    assert main(["model", "list"]) == Exit.OK
    out = capsys.readouterr().out
    assert "no head model installed" in out and "no depth checkpoint installed" in out
    assert main(["model", "install", str(checkpoints["operator"])]) == Exit.OK
    assert "--depth-model operators_own" in capsys.readouterr().out
    assert installed() == {"operators_own": ARCH}
    assert main(["model", "install", str(checkpoints["operator"])]) == Exit.USAGE  # already there
    assert "overwrite" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    state = torch.load(checkpoints["upstream"], weights_only=True)
    state.pop(list(state)[-1])  # a decoder tensor: the architecture is still recognised
    torch.save(state, broken)
    assert main(["model", "install", str(broken)]) == Exit.BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0], err
    assert main(["model", "list"]) == Exit.OK
    assert f"operators_own ({ARCH})" in capsys.readouterr().out and installed() == {"operators_own": ARCH}


@needs_bpy
def test_batch_asks_for_the_network(depth_server, grace_hopper_jpg, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "grace_hopper.jpg").write_bytes(grace_hopper_jpg)
    output = tmp_path / "out"
    result = run_batch(python_command("--input", str(photos), "--output", str(output), "--server",
                                      depth_server.address, "--formats", "blend,obj", "--depth-backend", "network",
                                      "--depth-model", ARCH))
    assert result.returncode == Exit.OK
    entry = by_key(load_summary(output))["grace_hopper"]
    assert entry["status"] == "ok" and entry["face_details"][0]["depth_backend"] == "network"
    assert "depth_network" in entry["server_timings_ms"]
    refused = run_batch(python_command("--input", str(photos), "--output", str(tmp_path / "no"), "--server",
                                       depth_server.address, "--depth-backend", "network", "--depth-model", "/tmp/x.pt"))
    assert refused.returncode == Exit.USAGE and "paths are refused" in refused.stderr


@needs_bpy
def test_the_panel_asks_for_the_network(depth_server, tmp_path, grace_hopper_jpg):
    """Face geometry, Depth: Network and an installed model name in the panel reach the server."""
    import bpy

    import addon
    from addon.ui import operators, preferences

    photo = tmp_path / "grace_hopper.jpg"
    photo.write_bytes(grace_hopper_jpg)
    addon.register()
    address, preferences.DEFAULTS.server_address = preferences.DEFAULTS.server_address, depth_server.address
    try:
        bpy.ops.wm.read_homefile(use_empty=True)
        props = bpy.context.scene.faceforge
        props.photo_path, props.geometry, props.depth_backend, props.depth_model = str(photo), "FACE", "NETWORK", ARCH
        props.depth_fuse_weight = 0.5
        assert bpy.ops.faceforge.reconstruct() == {"FINISHED"}, operators.SESSION.message
        metadata = bpy.data.objects["grace_hopper"]["faceforge"].to_dict()
        assert metadata["options"]["depth_model"] == ARCH and metadata["options"]["depth_fuse_weight"] == 0.5
        assert metadata["face"]["depth_backend"] == "network"
    finally:
        preferences.DEFAULTS.server_address = address
        addon.unregister()


@pytest.fixture(scope="module")
def astronaut_crop(astronaut_rgb):
    from inference_server import alignment
    from inference_server.detection import FaceDetector
    from inference_server.landmarks import LandmarkModel

    detection = FaceDetector(torch.device("cpu")).detect(astronaut_rgb, 640, 0.9, 0.05)[0]
    crop = alignment.warp(astronaut_rgb, alignment.crop_transform(detection, 512, 0.3), 512)
    return crop, LandmarkModel().locate(crop)


def seen_by_camera(geometry) -> np.ndarray:
    """The landmark surface rendered as the camera sees it: metres (larger = nearer) on crop pixels."""
    from scipy.interpolate import griddata

    from inference_server.depth.face_fusion import FUSION_GRID

    centres = geometry.grid_centres(FUSION_GRID)
    seen = geometry.seen_at(centres, geometry.field.sample(centres))
    visible = geometry.visible(FUSION_GRID, geometry.region_mask(FUSION_GRID)).ravel()
    rows, cols = np.mgrid[0:512, 0:512] + 0.5
    z = griddata(seen[visible, :2], seen[visible, 2], (cols, rows), method="linear")
    z = np.where(np.isfinite(z), z, np.nanmin(z))
    return (z - z.min()) * geometry.scale


@pytest.mark.parametrize("yaw", [-30, 0, 30])
def test_fusion_puts_the_network_relief_where_the_camera_saw_it(astronaut_crop, yaw):
    """A "network" that is an affine function of the true inverse depth plus a 3 mm bump on one cheek,
    for a face turned by ``yaw`` degrees: the fusion recovers the affine map, the cheek's mesh point
    comes forward, the rest of the face stays put, and the detail map has the bump where the texture does."""
    from inference_server.depth.face_fusion import DETAIL_METRES_PER_UNIT, fuse_into_face
    from inference_server.depth.fuse import FuseConfig
    from inference_server.face_geometry import FaceGeometry

    crop, points = astronaut_crop
    c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    pivot = points[:468].mean(0)
    points = (points - pivot) @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T + pivot  # the head turned by yaw
    geometry = FaceGeometry(points, ReconstructionConfig())
    cheek = points[50, :2]
    rows, cols = np.mgrid[0:512, 0:512] + 0.5
    bump = 0.003 * np.exp(-((cols - cheek[0]) ** 2 + (rows - cheek[1]) ** 2) / (2 * (0.02 * geometry.pixel_width) ** 2))
    inverse = (7.0 / (1.0 - (seen_by_camera(geometry) + bump)) + 3.0).astype(np.float32)
    before = geometry.landmarks_metres(points)
    fusion = fuse_into_face(geometry, inverse, FuseConfig(), split=3.0)
    forward = (before - geometry.landmarks_metres(points))[:, 1]  # Blender -Y: toward the camera
    assert abs(fusion.alignment.scale - 1 / 7) < 0.002 and abs(fusion.alignment.shift + 3 / 7) < 0.01
    assert 0.001 < forward[50] < 0.003, "the cheek's point comes forward by the bump's mesh band"
    far = np.linalg.norm(points[:, :2] - cheek, axis=1) > 0.15 * geometry.pixel_width
    assert np.abs(forward[far]).max() < 0.002
    x, y = np.round(cheek).astype(int)
    assert fusion.detail[y, x] * DETAIL_METRES_PER_UNIT > 0.0003, "the bump's fine part is in the detail map"


def test_cues_backend_without_weights_is_refused_clearly(tmp_path, monkeypatch):
    """A damaged or missing cues network: not offered, and a request for it gets no_model, not a crash."""
    from inference_server.cues import checkpoint

    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path))
    monkeypatch.setattr(checkpoint, "SHIPPED", tmp_path / "absent.pt")
    networks = DepthNetworks(torch.device("cpu"))
    assert networks.info()["depth_backends"] == ["landmarks"]
    with pytest.raises(ProtocolError) as info:
        networks.cues_network()
    assert info.value.code == ErrorCode.NO_MODEL and "depth_backend 'cues' needs the cues network" in info.value.message
