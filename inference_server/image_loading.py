"""Decode untrusted image bytes into an RGB uint8 array, with limits checked before decoding."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from addon.wire.protocol import ErrorCode, ProtocolError

SUPPORTED = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO")
MIN_SIDE = 32  # pixels: the smallest face the detector finds is 12 px inside a margin of context

# Our own ``max_pixels`` check (configurable per request, with a clear message) replaces Pillow's
# fixed decompression-bomb limit, which would otherwise fire first with a less useful error.
Image.MAX_IMAGE_PIXELS = None


def _pixel_count(pixels: int) -> str:
    """Megapixels where that reads well, else the exact count (a limit of 1 is not "0.0 MP")."""
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels:,} pixel{'s' if pixels != 1 else ''}"


def load_rgb(data: bytes | memoryview, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied. Raises ``ProtocolError`` for bad or oversize input."""
    if len(data) == 0:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in SUPPORTED:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"unsupported image format {image.format}; use JPEG, PNG, WebP, BMP or TIFF")
        width, height = image.size
        if min(width, height) < MIN_SIDE:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"image is {width}x{height} pixels; a photo needs at least "
                                                     f"{MIN_SIDE} pixels on each side")
        if width * height > max_pixels:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"image is {width}x{height} = {_pixel_count(width * height)}; "
                                                     f"the limit is {_pixel_count(max_pixels)}")
        image.load()
        return _to_rgb8(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "not a recognised image (JPEG, PNG, WebP, BMP or TIFF expected)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"cannot decode image ({exc.__class__.__name__}: {str(exc)[:120]})") from None


EXIF_IFD, FOCAL_35MM = 0x8769, 0xA405  # Exif sub-IFD; FocalLengthIn35mmFilm (mm)
FULL_FRAME_LONG_SIDE_MM = 36.0


def exif_focal_px(data: bytes | memoryview, image_size: tuple[int, int]) -> float | None:
    """The camera's focal length in pixels of the decoded photo ``image_size`` (height, width), from
    EXIF's 35 mm-equivalent focal length (a full frame's long side is 36 mm); None when the photo does
    not say. Only the header is read; anything unreadable counts as not said."""
    try:
        focal = Image.open(io.BytesIO(data)).getexif().get_ifd(EXIF_IFD).get(FOCAL_35MM)
        focal = float(focal)
    except Exception:  # noqa: BLE001 (untrusted metadata: any failure means "no focal")
        return None
    if not 8.0 <= focal <= 2000.0:  # 8 mm fisheye .. 2000 mm telephoto; outside is junk
        return None
    return focal / FULL_FRAME_LONG_SIDE_MM * max(image_size)


def _to_rgb8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: Pillow's convert("L") clips instead of scaling, so scale ourselves.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become mid-grey: neither a fake skin tone nor a harsh edge for the detector.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
