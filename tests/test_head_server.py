"""Head mode end to end: a live server with the head model installed by the product's installer."""
import numpy as np
import pytest

from addon.wire import protocol
from addon.wire.client import Client
from addon.wire.errors import ErrorCode, ProtocolError
from inference_server import limits
from inference_server.config import ReconstructionConfig

from .conftest import _png
from .held_out_photos import occluded, side_lit


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
    assert meta["fit"]["landmark_error_eye_pct"] < 8.0
    assert arrays["texture"].shape == (1024, 1024, 3) and arrays["mask"].any()
    assert np.isfinite(arrays["depth"]).all() and arrays["depth"][arrays["mask"]].max() > 0.05
    stages = [report["stage"] for report in reports]  # de-lit by default: refine replaces the plain unwrap
    assert {"fit", "refine", "depth"} <= set(stages) and stages.index("fit") < stages.index("refine")
    assert "texture" not in stages and np.array(meta["lighting"]["sh"]).shape == (9, 3)


def test_head_replies_carry_per_face_arrays_and_the_model_arrays_come_once(head_server, astronaut_png):
    """A default head reply is a few MB: what every head of the model shares (topology, UVs, the 53
    expression deltas: 17 MB) is named by fingerprint, fetched once by the client and shared."""
    with Client(head_server.address, timeout=180) as client:
        message = client.call("reconstruct", {}, {"image": astronaut_png})
        (meta,) = message.result["faces"]
        sent = {name.split("/", 1)[1]: array for name, array in message.payloads.items()}
        assert set(sent) == set(protocol.HEAD_FACE_ARRAYS) | {"vertex_irradiance"}
        wire_bytes = sum(array.nbytes for array in sent.values())
        assert wire_bytes <= 6 * limits.MB, wire_bytes
        assert sent["detail"].dtype == np.float16 and sent["vertex_irradiance"].shape == (24591, 3)
        first = client.reconstruction(message).faces[0]
        second = client.reconstruct(astronaut_png).faces[0]
        with pytest.raises(ProtocolError, match="not this server's") as refused:
            client.call("head_model", {"fingerprint": "0" * 32})
    assert refused.value.code == ErrorCode.BAD_REQUEST
    with Client(head_server.address, timeout=60) as fresh:  # its own identity: asks once, then is told to wait
        shared = fresh.call("head_model", {"fingerprint": meta["model_fingerprint"]})
        with pytest.raises(ProtocolError, match="kept by it") as again:
            fresh.call("head_model", {"fingerprint": meta["model_fingerprint"]})
    assert again.value.code == ErrorCode.BUSY  # 16 MiB for a few bytes: never on demand in a loop
    assert set(shared.payloads) == set(protocol.HEAD_MODEL_ARRAYS)
    assert sum(array.nbytes for array in shared.payloads.values()) > 15 * limits.MB
    for name in protocol.HEAD_MODEL_ARRAYS:  # one cached copy, read-only, equal to what the server sends
        assert first.arrays[name] is second.arrays[name] and not first.arrays[name].flags.writeable
        assert np.array_equal(first.arrays[name], shared.payloads[name])


def test_a_group_photo_of_six_gets_six_heads_within_the_default_limits(head_server, astronaut_rgb):
    """Six faces in head mode, every server limit at its default (64 MB replies): about 36 MB."""
    import io

    from PIL import Image

    face = astronaut_rgb[:300, 100:380]
    group = np.concatenate([np.concatenate([face, np.ascontiguousarray(face[:, ::-1]), face], axis=1)] * 2, axis=0)
    photo = io.BytesIO()
    Image.fromarray(group).save(photo, "PNG")
    with Client(head_server.address, timeout=600) as client:
        reply = client.reconstruct(photo.getvalue(), {"face": "all"}, timeout=600)
    assert len(reply.faces) == 6 and all(face.meta["geometry"] == "head" for face in reply.faces)
    assert all(face.arrays["expression_deltas"].shape == (53, 24591, 3) for face in reply.faces)


def test_geometry_face_on_a_head_server_and_head_without_a_model(head_server, server_address, astronaut_png):
    with Client(head_server.address, timeout=180) as client:
        face = client.reconstruct(astronaut_png, {"geometry": "face", "resolution": 30}).faces[0]
    assert face.meta["geometry"] == "face" and "faces" in face.arrays
    with Client(server_address, timeout=60) as client, pytest.raises(ProtocolError) as info:
        client.reconstruct(astronaut_png, {"geometry": "head"})
    assert info.value.code == ErrorCode.NO_MODEL
    assert "model install" in info.value.message and "model fetch" in info.value.message


def test_shape_cues_network_runs_the_cues_network_on_the_live_server(head_server, astronaut_png):
    """``shape_cues network`` (and the default, auto, when the weights are there): the server's cues
    network (the shipped weights) reads the photo in its own stage before the fit, and the head it
    gives differs from the landmark-only one."""
    reports = []
    with Client(head_server.address, timeout=180) as client:
        assert "cues network (faceforge)" in client.info()["models"]
        plain = client.reconstruct(astronaut_png, {"shape_cues": "landmarks"}).faces[0]
        cued = client.reconstruct(astronaut_png, {"shape_cues": "network"}, on_progress=reports.append).faces[0]
        default = client.reconstruct(astronaut_png).faces[0]
    assert plain.meta["fit"]["shape_cues"] == "landmarks" and cued.meta["fit"]["shape_cues"] == "network"
    assert default.meta["fit"]["shape_cues"] == "network"
    np.testing.assert_allclose(default.arrays["vertices"], cued.arrays["vertices"], atol=1e-5)
    stages = [report["stage"] for report in reports]
    assert stages.index("cues") < stages.index("fit")
    moved = np.linalg.norm(cued.arrays["vertices"] - plain.arrays["vertices"], axis=1)
    assert 0.0003 < np.median(moved) < 0.01   # metres: a different face, not a broken one
    assert cued.meta["fit"]["landmark_error_eye_pct"] < 8.0


def test_light_refinement_sends_a_de_lit_albedo_lighting_and_its_residual(head_server, astronaut_png):
    with Client(head_server.address, timeout=300) as client:
        plain = client.call("reconstruct", {"refine": "off"}, {"image": astronaut_png})
        refined = client.call("reconstruct", {"refine": "light"}, {"image": astronaut_png})
        for message, params in ((plain, {"refine": "off"}), (refined, {})):  # the size checked before the work
            estimate = limits.face_reply_bytes(ReconstructionConfig().with_params(params), head=True)
            assert sum(array.nbytes for array in message.payloads.values()) <= estimate
        plain, refined = client.reconstruction(plain).faces[0], client.reconstruction(refined).faces[0]
    meta = refined.meta
    assert np.array(meta["lighting"]["sh"]).shape == (9, 3) and meta["lighting"]["frame"] == "blender world"
    assert set(meta["photometric_residual"]) == {"before", "after"} and meta["photometric_residual"]["after"] < 0.5
    irradiance = refined.arrays["vertex_irradiance"].astype(np.float32)
    assert irradiance.shape == (24591, 3) and 0.3 < np.median(irradiance) < 3.0 and "vertex_irradiance" not in plain.arrays
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
    plain projection keeps the shadow, the default `light` albedo does not (< 25 % apart), and no
    blotch or stripe is left where the second-order light missed the shadow: mirror-image points of
    the face agree (before the mirror check, 10 % of them were more than 2.2x apart, 1 % 6x)."""
    with Client(head_server.address, timeout=300) as client:
        marks = client.reconstruct(astronaut_png, {"geometry": "face", "resolution": 30}).faces[0].arrays
        photo = _png(side_lit(astronaut_rgb, marks["landmarks_image"]))
        plain = client.reconstruct(photo, {"refine": "off"}).faces[0]
        refined = client.reconstruct(photo).faces[0]  # de-lit by default
    assert _cheek_ratio(plain) > 5.0  # the shadow is painted onto the plain texture
    assert _cheek_ratio(refined) < 1.25
    apart = _mirror_disagreement(refined)
    assert np.percentile(apart, 90) < 0.4 and np.percentile(apart, 99) < 1.0, np.percentile(apart, [90, 99])


def test_hair_collar_and_background_stay_off_the_skin(head_server, astronaut_rgb, astronaut_png):
    """What is in front of the head but is not its skin is not painted onto it: the astronaut's hair
    and a dark fringe over her forehead on the skull, her suit's collar ring on the neck (before:
    26-52 % of the scalp's and 88-96 % of the neck's vertices darker than 0.6x her cheeks). The face's
    own features stay: brows and eyes are still darker than the cheeks."""
    from scipy.spatial import cKDTree

    with Client(head_server.address, timeout=300) as client:
        marks = client.reconstruct(astronaut_png, {"geometry": "face", "resolution": 30}).faces[0].arrays
        heads = [client.reconstruct(photo).faces[0]
                 for photo in (astronaut_png, _png(occluded(astronaut_rgb, marks["landmarks_image"])))]
    for head in heads:
        vertices, luminance = head.arrays["vertices"], _vertex_luminance(head)
        face = vertices[:6706]
        nose = face[np.argmin(face[:, 1])]
        cheeks = (np.abs(np.abs(face[:, 0]) - 0.04) < 0.01) & (np.abs(face[:, 2] - nose[2]) < 0.01)
        skin = np.median(luminance[:6706][cheeks])
        scalp = vertices[:, 2] > nose[2] + 0.075
        neck = (vertices[:, 2] < nose[2] - 0.11) & (vertices[:, 1] < 0.0)
        assert (luminance[scalp] < 0.6 * skin).mean() < 0.03 and (luminance[neck] < 0.6 * skin).mean() < 0.03
        tree = cKDTree(face)
        for landmarks, darker in (((159, 386), 0.8), ((52, 65, 282, 295), 0.93)):  # upper lids, brows: the photo's
            near = np.unique(np.concatenate(tree.query_ball_point(head.arrays["landmarks"][list(landmarks)], 0.004)))
            assert np.median(luminance[near]) < darker * skin


def _luminance_at(face, uv: np.ndarray) -> np.ndarray:
    """The texture's luminance at atlas coordinates ``uv`` (nearest texel)."""
    texture = face.arrays["texture"].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722])
    side = texture.shape[0]
    rows = np.clip(((1 - uv[:, 1]) * side).astype(int), 0, side - 1)
    cols = np.clip((uv[:, 0] * side).astype(int), 0, side - 1)
    return texture[rows, cols]


def _vertex_luminance(face) -> np.ndarray:
    """The texture's luminance under each vertex (one of its corners' UVs)."""
    uv = np.zeros((len(face.arrays["vertices"]), 2))
    uv[face.arrays["polygon_vertices"]] = face.arrays["corner_uvs"]
    return _luminance_at(face, uv)


def _mirror_disagreement(face) -> np.ndarray:
    """|log2| of the luminance ratio between mirror-image vertices on the front of the face."""
    from scipy.spatial import cKDTree

    vertices = face.arrays["vertices"][:6706]
    luminance = _vertex_luminance(face)[:6706]
    nose = vertices[np.argmin(vertices[:, 1])]
    front = ((np.abs(vertices[:, 0]) < 0.055) & (np.abs(vertices[:, 2] - nose[2] + 0.01) < 0.06)
             & (vertices[:, 1] < nose[1] + 0.05))
    distance, mirror = cKDTree(vertices).query(vertices * [-1.0, 1.0, 1.0])
    pairs = front & (vertices[:, 0] > 0.01) & (distance < 0.002)
    return np.abs(np.log2(np.maximum(luminance[pairs], 1.0) / np.maximum(luminance[mirror[pairs]], 1.0)))


def _cheek_ratio(face) -> float:
    """Brighter over darker mean luminance of the texture under the two cheeks (4.5 cm either side of
    the nose, a centimetre above its tip)."""
    vertices, corners, uvs = face.arrays["vertices"][:6706], face.arrays["polygon_vertices"], face.arrays["corner_uvs"]
    nose = vertices[np.argmin(vertices[:, 1])]
    means = []
    for sign in (-1, 1):
        near = np.flatnonzero((np.abs(vertices[:, 0] - sign * 0.045) < 0.008) & (np.abs(vertices[:, 2] - nose[2] - 0.01) < 0.01)
                              & (vertices[:, 1] < nose[1] + 0.06))
        means.append(float(_luminance_at(face, uvs[np.isin(corners, near)]).mean()))
    return max(means) / max(min(means), 1e-3)


def test_refine_full_shape_is_in_the_vertices_so_every_export_carries_it(head_server, astronaut_png, tmp_path):
    """``refine full``'s shape from shading is added to the reply's vertices (it used to travel only as
    a displacement map for Blender's Detail modifier, and OBJ/PLY/glb exports lost it)."""
    from inference_server import exporters

    with Client(head_server.address, timeout=300) as client:
        light = client.reconstruct(astronaut_png).faces[0]
        full = client.reconstruct(astronaut_png, {"refine": "full"}).faces[0]
    displacement = full.arrays["vertex_displacement"]
    moved = np.linalg.norm(full.arrays["vertices"] - light.arrays["vertices"], axis=1)  # the same fit underneath
    np.testing.assert_allclose(moved, np.abs(displacement), atol=2e-5)
    assert np.abs(displacement).max() > 3e-4 and full.meta["displacement"]["in_vertices"]
    assert full.meta["detail_unit"] == "luminance" and "vertex_displacement" not in light.arrays

    def obj_vertices(face, name):
        exporters.write_obj(tmp_path / name, face.arrays)
        lines = (tmp_path / name).read_text().splitlines()
        return np.array([line.split()[1:4] for line in lines if line.startswith("v ")], float)

    written = np.linalg.norm(obj_vertices(full, "full.obj") - obj_vertices(light, "light.obj"), axis=1)
    np.testing.assert_allclose(written, np.abs(displacement), atol=2e-5)
