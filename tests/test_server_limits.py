"""Cost bounds on a real server: the operator's ceilings, the reply-size estimate, photo bombs, degenerate
photos and option ranges: refused at once, with the option named, never as ``internal``."""
import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from addon.wire.client import Client
from addon.wire.protocol import ErrorCode, ProtocolError

from .conftest import REPO
from .fuzz_messages import png_header_only, rss_mb, small_photos
from .photo_fixtures import two_faces_folder  # noqa: F401  (fixture)


def _refusal(address: str, photo: bytes, params: dict) -> tuple[ProtocolError, float]:
    with Client(address, timeout=60) as client:
        started = time.monotonic()
        with pytest.raises(ProtocolError) as info:
            client.reconstruct(photo, params)
        return info.value, time.monotonic() - started


@pytest.mark.parametrize("params, named, limit", [
    ({"texture_size": 2048}, "'texture_size'=2048", "limit 1024"),
    ({"max_pixels": 5_000_000}, "'max_pixels'=5000000", "limit 4000000"),
    ({"resolution": 400, "texture_size": 1024, "depth_size": 1024}, "'texture_size'=1024 makes the reply about 18 MB",
     "limit of 16 MB"),
])
def test_requests_over_the_operators_ceilings_are_refused_at_once(limited_server, astronaut_png, params, named, limit):
    error, seconds = _refusal(limited_server.address, astronaut_png, params)
    assert error.code == ErrorCode.TOO_LARGE and named in error.message and limit in error.message
    assert seconds < 2.0  # refused on the I/O thread, before any work


def test_faces_found_are_counted_against_the_reply_size(limited_server, two_faces_folder):  # noqa: F811
    pair = (two_faces_folder / "pair.png").read_bytes()
    heavy = {"texture_size": 1024, "depth_size": 512, "face": "all"}  # 9 MB a face: two exceed 16 MB
    error, _ = _refusal(limited_server.address, pair, heavy)
    assert error.code == ErrorCode.TOO_LARGE and "'face'='all' found 2 faces" in error.message
    with Client(limited_server.address, timeout=120) as client:
        (face,) = client.reconstruct(pair, dict(heavy, face="largest")).faces
    assert face.arrays["texture"].shape == (1024, 1024, 3)


def test_a_photo_bomb_is_refused_from_its_header(limited_server):
    before = rss_mb(limited_server.pid)
    error, seconds = _refusal(limited_server.address, png_header_only(16000, 16000), {})
    assert error.code == ErrorCode.TOO_LARGE and "16000x16000" in error.message and "limit is 4.0 MP" in error.message
    assert seconds < 5 and rss_mb(limited_server.pid) - before < 30


@pytest.mark.parametrize("shape", [(1, 1), (1, 4000), (4000, 1), (20, 20)])
def test_degenerate_photos_are_bad_images_with_a_plain_message(server_address, shape):
    buf = io.BytesIO()
    Image.fromarray(np.zeros(shape + (3,), np.uint8)).save(buf, "PNG")
    error, _ = _refusal(server_address, buf.getvalue(), {})
    assert error.code == ErrorCode.BAD_IMAGE and f"{shape[1]}x{shape[0]} pixels" in error.message
    assert not any(word in error.message for word in ("OpenCV", ".cpp", "Traceback", "torch"))


def test_a_sliver_of_a_photo_has_no_face(server_address):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 4000, 3), np.uint8)).save(buf, "PNG")
    error, _ = _refusal(server_address, buf.getvalue(), {"detect_max_side": 64})
    assert error.code == ErrorCode.NO_FACE


@pytest.mark.parametrize("params, option", [
    ({"detail_sigma": 1e6}, "detail_sigma"), ({"detail_sigma": 1e4}, "detail_sigma"),
    ({"crop_margin": -0.1}, "crop_margin"), ({"contour_inset": -1}, "contour_inset"),
    ({"min_face_score": -1.0}, "min_face_score"), ({"resolution": 8.9}, "resolution"),
])
def test_options_out_of_their_cost_bounding_range_are_bad_requests(server_address, astronaut_png, params, option):
    error, seconds = _refusal(server_address, astronaut_png, params)
    assert error.code == ErrorCode.BAD_REQUEST and f"'{option}'" in error.message and seconds < 2.0


def test_the_default_server_takes_every_option_at_its_maximum(server_address, grace_hopper_jpg):
    """The ranges are the cost bound: every option at its maximum is one face of about 41 MB."""
    photo = small_photos([grace_hopper_jpg], side=400)[0]
    params = {"resolution": 400, "depth_size": 1024, "texture_size": 2048, "detail_sigma": 20.0,
              "detect_max_side": 2048, "min_face_fraction": 0.01, "taubin_passes": 50, "crop_margin": 1.0}
    with Client(server_address, timeout=300) as client:
        (face,) = client.reconstruct(photo, params).faces
    assert face.arrays["texture"].shape == (2048, 2048, 3)
    assert sum(array.nbytes for array in face.arrays.values()) < 64 * 1024 * 1024


def test_server_defaults_over_its_own_limits_refuse_to_start():
    result = subprocess.run([sys.executable, "-m", "inference_server", "serve", "--texture-size", "2048",
                             "--max-texture-size", "1024", "--bind", "tcp://127.0.0.1:1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "'texture_size'=2048 exceeds this server's limit 1024" in result.stderr
