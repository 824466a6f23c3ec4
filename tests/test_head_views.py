"""Several photos of one person -> one head, through a live server: one identity fitted to every
photo, a pose and expression per photo, the texture blended from all of them; and what is refused."""
import numpy as np
import pytest
from PIL import Image

from addon.wire import protocol
from addon.wire.client import Client
from addon.wire.errors import ErrorCode, ProtocolError

from .conftest import _png


@pytest.fixture(scope="module")
def mirrored_png(astronaut_rgb) -> bytes:
    """The astronaut seen as from the other side: the same person, the head turned the other way."""
    return _png(np.ascontiguousarray(astronaut_rgb[:, ::-1]))


@pytest.fixture(scope="module")
def tilted_png(astronaut_rgb) -> bytes:
    """The astronaut with the camera rolled 15 degrees."""
    return _png(np.asarray(Image.fromarray(astronaut_rgb).rotate(15, resample=Image.BICUBIC)))


def _angle_deg(a, b) -> float:
    relative = np.array(a)[:3, :3] @ np.array(b)[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))))


@pytest.fixture(scope="module")
def turned_renders():
    """One rendered head (the project's rasteriser) seen frontally and turned 30 degrees: two views."""
    from dataclasses import replace

    from benchmarks.head_fit_eval import make_subject, render_subject
    from inference_server.head.model import HeadModel

    from .ict_fixtures import ICT_NPZ

    if not ICT_NPZ.exists():
        pytest.skip(f"no ICT-FaceKit model at {ICT_NPZ}")
    model = HeadModel.load(ICT_NPZ)
    subject = make_subject(model, 3, False)
    return [_png(render_subject(model, replace(subject, pose=(yaw, 4.0, -3.0)))) for yaw in (0.0, 30.0)]


def test_two_photos_of_one_person_make_one_head_posed_like_the_first(head_server, turned_renders):
    front, turned = turned_renders
    reports = []
    with Client(head_server.address, timeout=180) as client:
        single = client.reconstruct(front, {"refine": "off"})
        reply = client.reconstruct([front, turned], on_progress=reports.append)
    (face,) = reply.faces
    meta, arrays = face.meta, face.arrays
    assert reply.meta["photos"] == 2 and [p["photo"] for p in meta["photos"]] == [1, 2] and "copies" not in meta
    assert meta["geometry"] == "head" and arrays["vertices"].shape == (24591, 3)
    first, second = meta["photos"]
    assert abs(_angle_deg(first["pose"]["matrix"], second["pose"]["matrix"]) - 30) < 5  # each photo's own pose
    assert first["landmark_error_eye_pct"] < 8.0 and second["landmark_error_eye_pct"] < 8.0
    assert meta["pose"] == first["pose"] and meta["camera"] == first["camera"]  # posed as the first photo shows it
    # One identity for both photos, and not the single photo's: the second photo adds what it saw.
    assert not np.allclose(meta["identity"], single.faces[0].meta["identity"], atol=1e-3)
    assert meta["refine"].startswith("off") and arrays["texture"].shape == (1024, 1024, 3)
    # One person: the network's cues fit the joint head nearly as well as each photo's own head.
    assert meta["same_person_check"] == "passed" and all(0.9 < p["cue_residual_rise"] < 1.10 for p in meta["photos"])
    assert all(0 < p["identity_apart_mm"] < 4.0 for p in meta["photos"]), meta["photos"]   # the regressed faces agree
    texts = [report["text"] for report in reports]
    assert any("photo 2/2" in text for text in texts) and any("2 photos" in text for text in texts)
    fractions = [report["fraction"] for report in reports]
    assert fractions == sorted(fractions)


def test_copies_of_one_photo_count_as_that_photo(head_server, astronaut_png, astronaut_rgb, mirrored_png, tilted_png,
                                                 turned_renders):
    """The astronaut cropped, rotated, re-encoded and mirrored is still one view of her: the copies are
    left out of the fit and named, and the head is the one her photo alone gives."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(astronaut_rgb[30:470, 50:450])).save(buffer, "JPEG", quality=40)
    cropped = buffer.getvalue()
    with Client(head_server.address, timeout=180) as client:
        single = client.reconstruct(astronaut_png).faces[0].meta
        reply = client.reconstruct([astronaut_png, tilted_png, cropped, mirrored_png]).faces[0].meta
        # A copy among real views: left out, the others fitted jointly and numbered as sent.
        mirrored_front = _png(np.asarray(Image.open(io.BytesIO(turned_renders[0])))[:, ::-1])
        mixed = client.reconstruct([turned_renders[0], turned_renders[1], mirrored_front]).faces[0].meta
    copies = {copy["photo"]: copy for copy in reply["copies"]}
    assert sorted(copies) == [2, 3, 4] and all(copy["copy_of"] == 1 for copy in copies.values())
    assert [copies[n]["mirrored"] for n in (2, 3, 4)] == [False, False, True]
    assert all(copy["similarity"] >= 0.9 for copy in copies.values())
    np.testing.assert_allclose(reply["identity"], single["identity"], atol=1e-4)  # her photo alone
    assert "photos" not in reply and reply.get("lighting") == single.get("lighting")  # the single-photo head, refined
    assert [copy["photo"] for copy in mixed["copies"]] == [3] and mixed["copies"][0]["copy_of"] == 1
    assert [photo["photo"] for photo in mixed["photos"]] == [1, 2]


def test_what_several_photos_cannot_do_is_refused_naming_the_photo(head_server, astronaut_png, mirrored_png,
                                                                    grace_hopper_jpg):
    blank = _png(np.full((200, 200, 3), 128, np.uint8))
    with Client(head_server.address, timeout=180) as client:
        cases = [([astronaut_png, blank], {}, ErrorCode.NO_FACE, "photo 2 of 2: no face"),
                 ([astronaut_png, grace_hopper_jpg], {}, ErrorCode.BAD_IMAGE,
                  "photo 2 of 2: it does not show the same person"),
                 ([astronaut_png, b"not an image"], {}, ErrorCode.BAD_IMAGE, "photo 2 of 2"),
                 ([astronaut_png, mirrored_png], {"geometry": "face"}, ErrorCode.BAD_REQUEST, "geometry head"),
                 ([astronaut_png, mirrored_png], {"face": "all"}, ErrorCode.BAD_REQUEST, "one face per photo"),
                 ([astronaut_png, mirrored_png], {"max_photos": 1}, ErrorCode.TOO_LARGE, "limit is 1")]
        for photos, options, code, said in cases:
            with pytest.raises(ProtocolError) as info:
                client.reconstruct(photos, options)
            assert info.value.code == code and said in info.value.message, (options, info.value)
        # Frames numbered with a gap are a malformed request, not a shorter one.
        with pytest.raises(ProtocolError) as info:
            client.call("reconstruct", {}, {"image": astronaut_png, "image_3": mirrored_png})
        assert info.value.code == ErrorCode.BAD_REQUEST and "without gaps" in info.value.message
        assert len(client.reconstruct(astronaut_png, {"refine": "off"}).faces) == 1  # and the server serves on
        # Without the cues network there is no check: the two people are fitted as one, and told so.
        unchecked = client.reconstruct([astronaut_png, grace_hopper_jpg], {"shape_cues": "landmarks"}).faces[0].meta
        assert unchecked["same_person_check"].startswith("not run")


def test_photo_frames_round_trip_and_refuse_arrays():
    photos = [b"a", b"bb", b"ccc"]
    payloads = protocol.photo_payloads(photos)
    assert list(payloads) == ["image", "image_2", "image_3"]
    message = protocol.decode(protocol.encode_request("reconstruct", "r", {}, payloads))
    assert [bytes(view) for view in protocol.photo_frames(message.payloads)] == photos
    with pytest.raises(ProtocolError, match="kind 'bytes'"):
        protocol.photo_frames({"image": memoryview(b"a"), "image_2": np.zeros(3)})
    with pytest.raises(ProtocolError, match="needs an 'image' frame"):
        protocol.photo_frames({"image_2": memoryview(b"a")})


def test_the_cli_makes_one_head_from_several_photos(head_data_dir, astronaut_rgb, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from .conftest import REPO

    paths = []
    for name, rgb in (("front.png", astronaut_rgb), ("other.png", np.ascontiguousarray(astronaut_rgb[:, ::-1]))):
        Image.fromarray(rgb).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    run = subprocess.run([sys.executable, "-m", "inference_server", "reconstruct", *paths, "-o", str(tmp_path / "head.obj"),
                          "--json", "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, FACEFORGE_DATA=str(head_data_dir)))
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["photos"] == paths and len(summary["faces"]) == 1 and summary["faces"][0]["vertices"] == 24591
    assert (tmp_path / "head.obj").stat().st_size > 1_000_000
