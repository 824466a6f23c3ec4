"""The web page's HTTP side, end to end: a real `web` process, the session's real head server, real photos.
(The browser itself: tests/test_web_browser.py.)"""
from __future__ import annotations

import io
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from addon.writers.glb import read_glb
from inference_server.web.app import file_key
from inference_server.security import is_loopback
from inference_server.web.cli import parse_bind
from inference_server.web.jobs import DONE, FAILED, JobStore, Refused
from tests.web_fixtures import Browser, WebProcess, astronaut_head, web_page  # noqa: F401


# -- pure parts ---------------------------------------------------------------------------------
def test_jobs_belong_to_their_session_and_expire_with_their_files(tmp_path):
    store = JobStore(tmp_path, keep_s=60, per_owner=1, queued=2)
    job = store.create("alice", [(".png", b"x")], {"geometry": "head"})
    assert job.photos[0].read_bytes() == b"x" and store.get("alice", job.id) is job
    assert store.get("bob", job.id) is None
    with pytest.raises(Refused) as refused:
        store.create("alice", [(".png", b"y")], {})
    assert refused.value.status == 429
    store.create("bob", [(".png", b"y")], {})
    with pytest.raises(Refused) as busy:
        store.create("carol", [(".png", b"z")], {})
    assert busy.value.status == 503
    assert job.result_status() == 409
    store.finish(job, DONE, result={"folder": str(job.folder), "files": ["a.glb"]})
    assert job.file("a.glb") == job.folder / "a.glb"
    assert job.file("../upload/photo0.png") is None and job.file("b.glb") is None
    assert store.expire(now=job.finished + 59) == [] and job.folder.exists()
    assert store.expire(now=job.finished + 60) == [job.id] and not job.folder.exists()
    assert store.get("alice", job.id) is None


def test_failed_jobs_answer_with_the_uploads_own_status(tmp_path):
    store = JobStore(tmp_path)
    for code, status in (("no_face", 422), ("bad_image", 422), ("too_large", 413), ("internal", 500)):
        job = store.create(code, [(".png", b"x")], {})
        store.finish(job, FAILED, error={"code": code, "message": "m"})
        assert job.result_status() == status


def test_the_fitted_lighting_turns_into_gltf_axes_exactly():
    from addon.wire import sh
    from inference_server.web.builder import lighting_y_up

    coefficients = np.random.default_rng(3).normal(size=(9, 3))
    converted = np.asarray(lighting_y_up({"lighting": {"frame": "blender world", "sh": coefficients.tolist()}}))
    blender = np.random.default_rng(4).normal(size=(50, 3))
    blender /= np.linalg.norm(blender, axis=1, keepdims=True)
    gltf = np.stack([blender[:, 0], blender[:, 2], -blender[:, 1]], 1)  # Blender (x, y, z) -> glTF (x, z, -y)
    np.testing.assert_allclose(sh.radiance_basis(gltf) @ converted, sh.radiance_basis(blender) @ coefficients, atol=1e-5)
    assert lighting_y_up({}) is None and lighting_y_up({"lighting": {"frame": "camera", "sh": coefficients.tolist()}}) is None


def test_depth_png_keeps_heights_to_10_micrometres(tmp_path):
    from inference_server.web.builder import depth_png

    depth = np.array([[0.0, 0.0123456], [0.1, 0.3]], np.float32)
    mask = np.array([[False, True], [True, True]])
    depth_png(tmp_path / "d.png", depth, mask)
    values = np.asarray(Image.open(tmp_path / "d.png"))
    assert values.dtype == np.uint16 and values[0, 0] == 0
    np.testing.assert_allclose(values[mask] / 100_000, depth[mask], atol=1e-5)


def test_the_page_takes_no_more_than_the_server_allows(tmp_path):
    from inference_server.web.app import WebConfig, within_server_limits

    config = WebConfig(results=tmp_path, max_upload_mb=40, max_photos=6, max_pixels=40_000_000)
    info = {"limits": {"max_pixels": 4_000_000, "max_message_bytes": 8 * 2**20}, "defaults": {"max_photos": 3}}
    lowered = within_server_limits(config, info)
    assert (lowered.max_pixels, lowered.max_photos, lowered.max_upload_mb) == (4_000_000, 3, 8)
    assert within_server_limits(config, {}) == config


def test_addresses_and_names():
    assert parse_bind("0.0.0.0:80") == ("0.0.0.0", 80) and parse_bind("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ValueError):
        parse_bind("localhost")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert file_key("my photo (1).JPG") == "my_photo_1" and file_key("../../etc/passwd") == "passwd"
    assert file_key("..") == "faceforge" and file_key(None) == "faceforge"


# -- the real page ------------------------------------------------------------------------------
def test_page_info_and_security_headers(web_page):
    browser = Browser(web_page.base)
    status, headers, body = browser.request("GET", "/")
    assert status == 200 and b"<canvas id=\"canvas\">" in body
    assert "script-src 'self' 'sha256-" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, script = browser.request("GET", "static/vendor/three/build/three.module.js")
    assert status == 200 and b"Three.js Authors" in script[:200]
    status, info = browser.json("GET", "api/info")
    assert status == 200 and info["max_pixels"] == 300000 and info["max_photos"] == 6
    assert "head" in info["options"]["geometry"]["choices"] and info["server"]["protocol_version"] >= 4
    status, _, _ = browser.request("GET", "static/../app.py")
    assert status in (403, 404)


def test_astronaut_head_with_every_download(astronaut_head):
    browser, job_id, view = astronaut_head
    assert view["state"] == "done", view
    result = view["result"]
    assert "folder" not in result  # no paths of the server's machine
    face = result["faces"][0]
    assert face["geometry"] == "head" and len(face["expressions"]) == 53 and face["vertices"] > 20000
    names = result["files"]
    for expected in ("astronaut.glb", "astronaut.blend", "astronaut.fbx", "astronaut_obj.zip", "astronaut_face0_depth.png"):
        assert expected in names
    status, headers, data = browser.request("GET", f"api/jobs/{job_id}/files/astronaut.glb")
    assert status == 200 and headers["Content-Type"] == "model/gltf-binary"
    document, binary = read_glb_bytes(data)
    meshes = [m for m in document["meshes"] if m.get("extras", {}).get("targetNames")]
    assert meshes and len(meshes[0]["extras"]["targetNames"]) == 53 and len(binary) > 1_000_000
    status, headers, blend = browser.request("GET", f"api/jobs/{job_id}/files/astronaut.blend")
    zstd = b"\x28\xb5\x2f\xfd"  # Blender 5 compresses its files
    assert status == 200 and blend[:4] in (b"BLEN", zstd) and "attachment" in headers["Content-Disposition"]
    status, _, fbx = browser.request("GET", f"api/jobs/{job_id}/files/astronaut.fbx")
    assert status == 200 and fbx.startswith(b"Kaydara FBX Binary")
    status, _, archive = browser.request("GET", f"api/jobs/{job_id}/files/astronaut_obj.zip")
    members = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    assert status == 200 and {"astronaut.obj", "astronaut.mtl", "astronaut_face0.png"} <= set(members)
    status, _, png = browser.request("GET", f"api/jobs/{job_id}/files/astronaut_face0_depth.png")
    depth = Image.open(io.BytesIO(png))
    values = np.asarray(depth)
    assert status == 200 and values.dtype == np.uint16 and "faceforge:depth" in depth.info
    heights_mm = values[values > 0] / 100.0  # 10 micrometres per unit
    assert values.shape[0] >= 64 and 30 < heights_mm.max() < 300 and (values == 0).any()


def read_glb_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "head.glb"
        path.write_bytes(data)
        return read_glb(path)


def test_face_mode_gives_a_face_without_sliders_and_its_depth(web_page, astronaut_png):
    browser = Browser(web_page.base)
    status, view = browser.upload([("astronaut.png", astronaut_png)], geometry="face")
    assert status == 202
    view = browser.wait(view["id"])
    assert view["state"] == "done", view
    face = view["result"]["faces"][0]
    assert face["geometry"] == "face" and face["expressions"] == [] and face["lighting"] is None
    status, _, data = browser.request("GET", f"api/jobs/{view['id']}/files/astronaut.glb")
    document, _ = read_glb_bytes(data)
    assert status == 200 and not any("targets" in p for m in document["meshes"] for p in m["primitives"])
    status, _, png = browser.request("GET", f"api/jobs/{view['id']}/files/astronaut_face0_depth.png")
    assert status == 200 and np.asarray(Image.open(io.BytesIO(png))).max() > 0


def test_results_are_private_to_their_session(astronaut_head, web_page):
    _, job_id, _ = astronaut_head
    stranger = Browser(web_page.base)
    for path in (f"api/jobs/{job_id}", f"api/jobs/{job_id}/result", f"api/jobs/{job_id}/files/astronaut.glb"):
        status, body = stranger.json("GET", path)
        assert status == 404 and "no such result" in body["error"]["message"]
    owner = astronaut_head[0]
    for name in ("..%2F..%2Fserver.log", "astronaut.json", "upload"):
        status, body = owner.json("GET", f"api/jobs/{job_id}/files/{name}")
        assert status == 404, name


def test_bad_uploads_get_a_clear_4xx(web_page, astronaut_rgb, grace_hopper_jpg):
    browser = Browser(web_page.base)
    jpeg = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(jpeg, "JPEG")
    status, body = browser.upload([("broken.jpg", jpeg.getvalue()[:4000] + bytes(range(256)) * 8)])
    assert status == 400 and "damaged" in body["error"]["message"] and "broken.jpg" in body["error"]["message"]
    status, body = browser.upload([("notes.txt", b"hello, not a photo")])
    assert status == 400 and "not an image" in body["error"]["message"]
    status, body = browser.upload([("hopper.jpg", grace_hopper_jpg)])
    assert status == 413 and "megapixels" in body["error"]["message"]
    status, body = browser.upload([("big.png", b"\x89PNG" + bytes(3 * 2**20))])
    assert status == 413 and "2 MB" in body["error"]["message"]
    status, body = browser.upload([])
    assert status == 400 and "no photo" in body["error"]["message"]
    status, body = browser.upload([("a.png", b"x")], geometry="sphere")
    assert status == 400
    status, body = browser.json("POST", "api/jobs", b"{}", {"Content-Type": "application/json"})
    assert status == 400 and "no photo" in body["error"]["message"]
    status, body = browser.json("GET", "api/nothing-here")
    assert status == 404 and "error" in body


def test_a_photo_without_a_face_fails_with_422_and_says_so(web_page, no_face_png):
    browser = Browser(web_page.base)
    status, view = browser.upload([("coffee.png", no_face_png)], geometry="head")
    assert status == 202
    view = browser.wait(view["id"])
    assert view["state"] == "failed" and view["error"]["code"] == "no_face"
    status, result = browser.json("GET", f"api/jobs/{view['id']}/result")
    assert status == 422 and "face" in result["error"]["message"]


def test_cancel_stops_a_running_reconstruction(web_page, astronaut_png):
    browser = Browser(web_page.base)
    status, view = browser.upload([("astronaut.png", astronaut_png)], geometry="head", refine="full")
    assert status == 202
    time.sleep(0.5)
    status, _ = browser.json("POST", f"api/jobs/{view['id']}/cancel")
    assert status == 202
    view = browser.wait(view["id"])
    assert view["state"] == "cancelled", view
    status, _ = browser.json("GET", f"api/jobs/{view['id']}/result")
    assert status == 409


def test_one_session_may_not_queue_more_than_two(web_page, astronaut_png):
    browser = Browser(web_page.base)
    ids = []
    for _ in range(2):
        status, view = browser.upload([("astronaut.png", astronaut_png)], geometry="face")
        assert status == 202
        ids.append(view["id"])
    status, body = browser.upload([("astronaut.png", astronaut_png)], geometry="face")
    assert status == 429 and "wait" in body["error"]["message"]
    for job_id in ids:
        browser.json("POST", f"api/jobs/{job_id}/cancel")
        assert browser.wait(job_id)["state"] in ("cancelled", "done")


def test_a_non_loopback_page_needs_its_token(head_server, tmp_path):
    web = WebProcess(head_server.address, tmp_path, bind="0.0.0.0:0")
    try:
        assert "?token=" in web.url
        token = web.url.split("?token=", 1)[1]
        assert len(token) >= 20
        local = web.base.replace("0.0.0.0", "127.0.0.1")
        status, body = Browser(local).json("GET", "api/info")
        assert status == 401 and "access token" in body["error"]["message"]
        visitor = Browser(local)
        status, _, page = visitor.request("GET", f"?token={token}")
        assert status == 200 and b"<canvas" in page
        status, info = visitor.json("GET", "api/info")  # the token cookie from the first visit
        assert status == 200 and info["max_photos"] == 6
        status, _ = Browser(local).json("GET", "api/info", headers={"Authorization": f"Bearer {token}x"})
        assert status == 401
    finally:
        assert web.stop() == 0


def test_an_inference_server_that_goes_away_fails_the_job_in_seconds(tmp_path, astronaut_png):
    from tests.conftest import start_server

    server = start_server(tmp_path / "server.log")
    web = WebProcess(server.address, tmp_path)
    try:
        server.stop()
        browser = Browser(web.base)
        started = time.monotonic()
        status, view = browser.upload([("astronaut.png", astronaut_png)], geometry="face")
        assert status == 202
        view = browser.wait(view["id"], timeout=60)
        assert view["state"] == "failed" and view["error"]["code"] == "unreachable", view
        assert "stopped answering" in view["error"]["message"] and time.monotonic() - started < 30
        status, _ = browser.json("GET", "api/info")
        assert status == 200  # the page itself carries on
    finally:
        server.stop()
        assert web.stop() == 0


def test_several_photos_make_one_head_and_a_mirrored_copy_adds_nothing(web_page, astronaut_rgb, astronaut_png):
    browser = Browser(web_page.base)
    mirrored = io.BytesIO()
    Image.fromarray(astronaut_rgb[:, ::-1]).save(mirrored, "PNG")
    status, view = browser.upload([("astronaut.png", astronaut_png), ("mirrored.png", mirrored.getvalue())],
                                  geometry="head")
    assert status == 202
    view = browser.wait(view["id"])
    assert view["state"] == "done", view
    (face,) = view["result"]["faces"]
    assert face["geometry"] == "head" and face["copies"] == 1 and face["photos"] == 1
