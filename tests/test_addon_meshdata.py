"""Plain unit tests of the add-on's bpy-free array and photo helpers."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from addon.data import meshdata, photo
from tests.addon_fixtures import rgb_pixels


def _quad():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    uvs = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    return vertices, faces, uvs


def test_mesh_arrays_expand_triangles_to_loops():
    vertices, faces, uvs = _quad()
    arrays = meshdata.mesh_arrays(vertices, faces, uvs)
    assert arrays.vertex_count == 4 and arrays.polygon_count == 2
    assert arrays.co.dtype == np.float32 and arrays.co.shape == (12,)
    assert arrays.vertex_index.dtype == np.int32
    assert arrays.vertex_index.tolist() == [0, 1, 2, 0, 2, 3]
    assert arrays.loop_start.tolist() == [0, 3] and arrays.loop_total.tolist() == [3, 3]
    # Per-loop UVs are the UVs of each corner's vertex, in loop order.
    assert arrays.loop_uv.reshape(-1, 2).tolist() == [[0, 0], [1, 0], [1, 1], [0, 0], [1, 1], [0, 1]]
    assert arrays.use_smooth.all() and arrays.use_smooth.shape == (2,)


def test_mesh_arrays_accept_read_only_views():
    vertices, faces, uvs = _quad()
    for array in (vertices, faces, uvs):
        array.setflags(write=False)  # replies are zero-copy read-only views
    assert meshdata.mesh_arrays(vertices, faces, uvs).co.flags.c_contiguous


@pytest.mark.parametrize("change, message", [
    (lambda v, f, u: (v, f + 2, u), "face indices"),
    (lambda v, f, u: (v, f - 1, u), "face indices"),
    (lambda v, f, u: (v[:, :2], f, u), "vertices"),
    (lambda v, f, u: (v, f[:, :2], u), "faces"),
    (lambda v, f, u: (v, f, u[:3]), "uvs"),
    (lambda v, f, u: (v, f.astype(np.float32), u), "integers"),
    (lambda v, f, u: (np.where(v == 1, np.nan, v).astype(np.float32), f, u), "NaN"),
])
def test_mesh_arrays_reject_what_would_crash_blender(change, message):
    with pytest.raises(ValueError, match=message):
        meshdata.mesh_arrays(*change(*_quad()))


def test_rgb_pixels_flip_rows_and_round_trip(astronaut_rgb):
    pixels = rgb_pixels(astronaut_rgb)
    height, width = astronaut_rgb.shape[:2]
    rgba = pixels.reshape(height, width, 4)
    assert pixels.dtype == np.float32
    # Blender's first pixel row is the photo's bottom row.
    np.testing.assert_allclose(rgba[0, :, :3], astronaut_rgb[-1] / 255, atol=1e-6)
    np.testing.assert_allclose(rgba[-1, :, :3], astronaut_rgb[0] / 255, atol=1e-6)
    assert (rgba[..., 3] == 1).all()
    assert np.array_equal(np.rint(rgba[::-1, :, :3] * 255).astype(np.uint8), astronaut_rgb)  # lossless


def test_scalar_pixels_are_offset_flipped_and_unclipped():
    detail = np.zeros((4, 5), np.float32)
    detail[0, 0], detail[3, 4] = 0.7, -0.6  # beyond [0, 1] around the detail's midlevel: the float fallback
    rgba = meshdata.scalar_pixels(detail, meshdata.DETAIL_MIDLEVEL).reshape(4, 5, 4)
    assert meshdata.DETAIL_MIDLEVEL == 0.5
    assert rgba[3, 0, 0] == pytest.approx(1.2)   # top-left of the map is Blender's last row
    assert rgba[0, 4, 1] == pytest.approx(-0.1)
    assert rgba[1, 1, 2] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        meshdata.scalar_pixels(np.zeros((2, 2, 3), np.float32))


def test_idprop_value_makes_metadata_storable():
    meta = {"box": np.array([1.5, 2, 3, 4], np.float32), "score": np.float32(0.99), "ok": True, "none": None,
            "mixed": ["a", 1], "matrix": [[1.0, 0.0], [0.0, 1.0]], "huge": 2**40, "nan": float("nan"),
            "timings_ms": {"load": 1, "detect": 2.5}, 3: "int key"}
    value = meshdata.idprop_value(meta)
    assert value["box"] == [1.5, 2.0, 3.0, 4.0] and value["score"] == pytest.approx(0.99)
    assert value["ok"] == 1 and value["none"] == ""
    assert value["mixed"] == '["a", 1]'          # mixed lists become JSON text
    assert value["matrix"] == [[1.0, 0.0], [0.0, 1.0]]
    assert value["huge"] == float(2**40)         # beyond int32: stored as float
    assert value["nan"] == "nan"
    assert value["timings_ms"] == {"load": 1, "detect": 2.5} and value["3"] == "int key"


@pytest.mark.parametrize("photo_name, index, count, expected", [
    ("/photos/astronaut.png", 0, 1, "astronaut"),
    ("C:\\photos\\Grace Hopper.jpeg", 0, 1, "Grace Hopper"),
    ("/photos/group.jpg", 2, 3, "group.face2"),
    ("render_result", 0, 1, "render_result"),
    ("/photos/.hidden", 0, 1, ".hidden"),
    ("", 0, 1, "Face"),
])
def test_object_name(photo_name, index, count, expected):
    assert meshdata.object_name(photo_name, index, count) == expected


def test_encode_png_round_trip(astronaut_rgb):
    height, width = astronaut_rgb.shape[:2]
    png = photo.encode_png(rgb_pixels(astronaut_rgb), width, height)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), astronaut_rgb)


def test_encode_png_converts_linear_float_and_grey():
    linear = np.full((2, 3, 4), 0.2140411, np.float32)  # sRGB 0.5 in scene-linear
    decoded = np.asarray(Image.open(io.BytesIO(photo.encode_png(linear.ravel(), 3, 2, linear=True))))
    assert decoded.shape == (2, 3, 3) and np.all(np.abs(decoded.astype(int) - 128) <= 1)
    grey = np.array([0.0, 1.0], np.float32)  # 2x1 one-channel image, bottom row first
    decoded = np.asarray(Image.open(io.BytesIO(photo.encode_png(grey, 1, 2, channels=1))))
    assert decoded[:, 0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_png_bytes_round_trip():
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(photo.png_bytes(rgb))))
    assert decoded.shape == (7, 5, 3) and np.array_equal(decoded, rgb)
    rgba = np.dstack([rgb, np.full((7, 5), 9, np.uint8)])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(photo.png_bytes(rgba)))), rgba)
    grey = np.random.default_rng(1).integers(0, 65536, (6, 9), dtype=np.uint16)
    decoded = Image.open(io.BytesIO(photo.png_bytes(grey)))
    assert decoded.mode.startswith("I;16") and np.array_equal(np.asarray(decoded).astype(np.uint16), grey)
    with pytest.raises(ValueError):
        photo.png_bytes(np.zeros((4, 4), np.uint8))


def test_read_photo(tmp_path, astronaut_png):
    path = tmp_path / "astronaut.png"
    path.write_bytes(astronaut_png)
    assert photo.read_photo(str(path)) == astronaut_png
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(OSError, match="empty"):
        photo.read_photo(str(tmp_path / "empty.png"))
    with pytest.raises(FileNotFoundError):
        photo.read_photo(str(tmp_path / "missing.png"))
    with pytest.raises(OSError, match="no photo"):
        photo.read_photo("")
