"""Head mode end to end: a live server with the head model installed by the product's installer."""
import numpy as np
import pytest

from addon.wire import protocol
from addon.wire.client import Client
from addon.wire.errors import ErrorCode, ProtocolError
from inference_server import limits
from inference_server.config import ReconstructionConfig


def test_info_reports_both_geometries(head_server, server_address):
    with Client(head_server.address, timeout=30) as client:
        assert client.info()["geometries"] == ["head", "face"]
    with Client(server_address, timeout=30) as client:
        assert client.info()["geometries"] == ["face"]


def test_a_photo_becomes_a_full_head_with_the_model_topology(head_server, astronaut_png):
    reports = []
    with Client(head_server.address, timeout=180) as client:
        reply = client.reconstruct(astronaut_png, on_progress=reports.append)
    (face,) = reply.faces
    arrays, meta = face.arrays, face.meta
    assert meta["geometry"] == "head" and set(protocol.HEAD_ARRAYS) <= set(arrays)
    assert arrays["vertices"].shape == (24591, 3) and len(meta["expressions"]) == 53
    sizes = arrays["polygon_sizes"]
    assert set(np.unique(sizes)) == {3, 4} and (sizes == 4).sum() > 20000
    assert len(arrays["polygon_vertices"]) == sizes.sum() == len(arrays["corner_uvs"])
    assert arrays["corner_uvs"].min() >= 0 and arrays["corner_uvs"].max() <= 1
    assert arrays["expression_deltas"].shape == (53, 24591, 3)
    weights = arrays["expression_weights"]
    assert weights.min() >= 0 and weights.max() <= 1
    smile = [weights[meta["expressions"].index(name)] for name in ("mouthSmile_L", "mouthSmile_R")]
    assert min(smile) > 0.4  # the astronaut smiles; a neutral expression would leave these near 0
    pose = np.array(meta["pose"]["matrix"])
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-4) and 0.2 < pose[1, 3] < 3.0
    face_width = np.ptp(arrays["vertices"][:6706, 0])  # the model's front-face area: vertices 0..6705
    assert 0.11 < face_width < 0.18  # metres
    assert meta["fit"]["landmark_error_eye_pct"] < 8.0 and meta["texture_coverage"] > 0.1
    assert arrays["texture"].shape == (1024, 1024, 3) and arrays["mask"].any()
    assert np.isfinite(arrays["depth"]).all() and arrays["depth"][arrays["mask"]].max() > 0.05
    stages = [report["stage"] for report in reports]
    assert {"fit", "texture", "depth"} <= set(stages) and stages.index("fit") < stages.index("texture")


def test_geometry_face_on_a_head_server_and_head_without_a_model(head_server, server_address, astronaut_png):
    with Client(head_server.address, timeout=180) as client:
        face = client.reconstruct(astronaut_png, {"geometry": "face", "resolution": 30}).faces[0]
    assert face.meta["geometry"] == "face" and "faces" in face.arrays
    with Client(server_address, timeout=60) as client, pytest.raises(ProtocolError) as info:
        client.reconstruct(astronaut_png, {"geometry": "head"})
    assert info.value.code == ErrorCode.NO_MODEL
    assert "model install" in info.value.message and "model fetch" in info.value.message


def test_shape_cues_network_runs_the_cues_network_on_the_live_server(head_server, astronaut_png):
    """``shape_cues network``: the server's cues network (the shipped weights) reads the photo in its
    own stage before the fit, and the head it gives differs from the landmark-only one."""
    reports = []
    with Client(head_server.address, timeout=180) as client:
        assert "cues network (faceforge)" in client.info()["models"]
        plain = client.reconstruct(astronaut_png).faces[0]
        cued = client.reconstruct(astronaut_png, {"shape_cues": "network"}, on_progress=reports.append).faces[0]
    assert plain.meta["fit"]["shape_cues"] == "landmarks" and cued.meta["fit"]["shape_cues"] == "network"
    stages = [report["stage"] for report in reports]
    assert stages.index("cues") < stages.index("fit")
    moved = np.linalg.norm(cued.arrays["vertices"] - plain.arrays["vertices"], axis=1)
    assert 0.0003 < np.median(moved) < 0.01   # metres: a different face, not a broken one
    assert cued.meta["fit"]["landmark_error_eye_pct"] < 8.0


def test_light_refinement_sends_a_de_lit_albedo_lighting_and_its_residual(head_server, astronaut_png):
    with Client(head_server.address, timeout=300) as client:
        plain = client.reconstruct(astronaut_png).faces[0]
        refined = client.reconstruct(astronaut_png, {"refine": "light"}).faces[0]
    meta = refined.meta
    assert np.array(meta["lighting"]["sh"]).shape == (9, 3) and meta["lighting"]["frame"] == "blender world"
    assert set(meta["photometric_residual"]) == {"before", "after"} and meta["photometric_residual"]["after"] < 0.5
    assert refined.arrays["lit_texture"].shape == refined.arrays["texture"].shape
    for face, params in ((plain, {}), (refined, {"refine": "light"})):  # the size checked before the work
        estimate = limits.face_reply_bytes(ReconstructionConfig().with_params(params), head=True)
        assert sum(array.nbytes for array in face.arrays.values()) <= estimate
    assert meta["detail_unit"] == "luminance" and "lighting" not in plain.meta
    # The albedo is the photo divided by its shading: not the plain projection.
    difference = np.abs(refined.arrays["texture"].astype(int) - plain.arrays["texture"].astype(int)).mean()
    assert difference > 2.0


def test_network_depth_is_face_mode_only(head_server, astronaut_png):
    with Client(head_server.address, timeout=60) as client, pytest.raises(ProtocolError) as info:
        client.reconstruct(astronaut_png, {"geometry": "head", "depth_backend": "network"})
    assert info.value.code == ErrorCode.BAD_REQUEST and "face" in info.value.message


def test_exif_focal_length_is_the_cameras(head_server, astronaut_rgb):
    """A photo that says it was taken at 50 mm (35 mm equivalent) is fitted with that focal length:
    50 / 36 of the long side in pixels; a photo that says nothing gets a fitted one."""
    import io

    from PIL import Image

    image = Image.fromarray(astronaut_rgb)
    exif = image.getexif()
    exif.get_ifd(0x8769)[0xA405] = 50
    tagged, plain = io.BytesIO(), io.BytesIO()
    image.save(tagged, "JPEG", quality=92, exif=exif)
    image.save(plain, "JPEG", quality=92)
    with Client(head_server.address, timeout=180) as client:
        with_exif = client.reconstruct(tagged.getvalue()).faces[0].meta["camera"]
        without = client.reconstruct(plain.getvalue()).faces[0].meta["camera"]
    assert with_exif["focal_source"] == "exif" and with_exif["focal_px"] == pytest.approx(50 / 36 * 512, abs=0.5)
    assert without["focal_source"] == "fitted"


def test_a_side_lit_real_photo_gives_an_even_albedo(head_server, astronaut_rgb, astronaut_png):
    """The astronaut relit by a light from one side (the far cheek 30x darker than the near one): the
    plain projection keeps the shadow, the `light` refinement's albedo does not (< 25 % apart)."""
    import io

    from PIL import Image

    with Client(head_server.address, timeout=300) as client:
        marks = client.reconstruct(astronaut_png, {"geometry": "face", "resolution": 30}).faces[0].arrays
        x0, x1 = sorted((marks["landmarks_image"][234, 0], marks["landmarks_image"][454, 0]))
        ramp = np.clip((np.arange(astronaut_rgb.shape[1]) - x0) / (x1 - x0), 0, 1)[None, :, None]
        lit = np.clip(astronaut_rgb * 30.0 ** -ramp, 0, 255).astype(np.uint8)
        photo = io.BytesIO()
        Image.fromarray(lit).save(photo, "PNG")
        plain = client.reconstruct(photo.getvalue()).faces[0]
        refined = client.reconstruct(photo.getvalue(), {"refine": "light"}).faces[0]
    assert _cheek_ratio(plain) > 5.0  # the shadow is painted onto the plain texture
    assert _cheek_ratio(refined) < 1.25


def _cheek_ratio(face) -> float:
    """Brighter over darker mean luminance of the texture under the two cheeks (4.5 cm either side of
    the nose, a centimetre above its tip)."""
    vertices, corners, uvs = face.arrays["vertices"][:6706], face.arrays["polygon_vertices"], face.arrays["corner_uvs"]
    texture = face.arrays["texture"].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722])
    side = texture.shape[0]
    nose = vertices[np.argmin(vertices[:, 1])]
    means = []
    for sign in (-1, 1):
        near = np.flatnonzero((np.abs(vertices[:, 0] - sign * 0.045) < 0.008) & (np.abs(vertices[:, 2] - nose[2] - 0.01) < 0.01)
                              & (vertices[:, 1] < nose[1] + 0.06))
        uv = uvs[np.isin(corners, near)]
        rows = np.clip(((1 - uv[:, 1]) * side).astype(int), 0, side - 1)
        cols = np.clip((uv[:, 0] * side).astype(int), 0, side - 1)
        means.append(float(texture[rows, cols].mean()))
    return max(means) / max(min(means), 1e-3)
