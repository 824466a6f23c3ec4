"""Decoding untrusted images: formats, EXIF orientation, odd modes, limits, garbage."""
import io

import numpy as np
import pytest
from PIL import Image

from addon.wire.protocol import ErrorCode, ProtocolError
from inference_server.image_loading import load_rgb


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_formats_decode_to_rgb8(astronaut_rgb, fmt):
    rgb = load_rgb(encode(Image.fromarray(astronaut_rgb), fmt), 10**8)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - astronaut_rgb).mean() < 8  # lossy formats stay close


def test_exif_orientation_is_applied(astronaut_rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    wide = Image.fromarray(astronaut_rgb[:, :300])
    rgb = load_rgb(encode(wide, "JPEG", exif=exif), 10**8)
    assert rgb.shape[:2] == (300, 512)


def test_grayscale_rgba_and_16bit(astronaut_rgb):
    gray = load_rgb(encode(Image.fromarray(astronaut_rgb).convert("L"), "PNG"), 10**8)
    assert gray.shape == (512, 512, 3) and (gray[..., 0] == gray[..., 2]).all()
    rgba = np.dstack([astronaut_rgb, np.full((512, 512), 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    out = load_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG"), 10**8)
    assert (out[:10, :10] == 128).all() and (out[100:, 100:] == astronaut_rgb[100:, 100:]).all()
    sixteen = (np.arange(256 * 256).reshape(256, 256) % 65536).astype(np.uint16)
    out16 = load_rgb(encode(Image.fromarray(sixteen), "PNG"), 10**8)
    assert out16.max() > 200 and out16.dtype == np.uint8  # scaled, not clipped to 255


def test_oversize_is_refused_before_decoding():
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")  # 400 MP declared, a few KB on disk
    assert len(bomb) < 200_000
    with pytest.raises(ProtocolError) as info:
        load_rgb(bomb, 40_000_000)
    assert info.value.code == ErrorCode.TOO_LARGE and "400.0 MP" in info.value.message
    for limit, said in ((1, "the limit is 1 pixel"), (4_096, "the limit is 4,096 pixels")):  # never "0.0 MP"
        with pytest.raises(ProtocolError, match=said):
            load_rgb(encode(Image.new("RGB", (100, 100)), "PNG"), limit)


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50])
def test_garbage_is_a_bad_image(data):
    with pytest.raises(ProtocolError) as info:
        load_rgb(data, 10**8)
    assert info.value.code == ErrorCode.BAD_IMAGE


def test_truncated_jpeg_is_a_bad_image(corrupt_bytes):
    with pytest.raises(ProtocolError) as info:
        load_rgb(corrupt_bytes, 10**8)
    assert info.value.code == ErrorCode.BAD_IMAGE
