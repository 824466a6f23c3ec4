"""Plain unit tests of the bpy-free head buffers (addon.data.headdata) and of the model-built test reply."""
from __future__ import annotations

import numpy as np
import pytest

from addon.data import headdata
from tests.head_fixtures import KEPT_VERTICES, head_reply_from_model, model_path, pose_matrix  # noqa: F401


def _quad_and_triangle():
    """A unit quad and a triangle on top of it, with their corner UVs and two materials."""
    return {
        "vertices": np.array([[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1], [0.5, 0, 1.5]], np.float32),
        "polygon_sizes": np.array([4, 3], np.uint8),
        "polygon_vertices": np.array([0, 1, 2, 3, 3, 2, 4], np.int32),
        "corner_uvs": np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 1], [1, 1], [0.5, 1]], np.float32),
        "polygon_material": np.array([1, 0], np.uint8),
    }


def test_mixed_polygons_become_loop_buffers():
    arrays = headdata.head_mesh_arrays(_quad_and_triangle(), material_count=2)
    assert arrays.vertex_count == 5 and arrays.polygon_count == 2
    assert arrays.loop_start.tolist() == [0, 4] and arrays.loop_total.tolist() == [4, 3]
    assert arrays.vertex_index.tolist() == [0, 1, 2, 3, 3, 2, 4] and arrays.vertex_index.dtype == np.int32
    assert arrays.loop_uv.shape == (14,) and arrays.loop_uv[-2:].tolist() == [0.5, 1.0]
    assert arrays.material_index.tolist() == [1, 0] and arrays.material_index.dtype == np.int32
    assert arrays.co.dtype == np.float32 and arrays.use_smooth.all()


def test_read_only_reply_views_are_accepted():
    arrays = _quad_and_triangle()
    for array in arrays.values():
        array.setflags(write=False)  # replies are zero-copy read-only views of the message
    assert headdata.head_mesh_arrays(arrays, material_count=2).co.flags.c_contiguous
    deltas = np.zeros((1, 5, 3), np.float32)
    deltas.setflags(write=False)
    assert headdata.shape_keys(arrays["vertices"], deltas, np.ones(1), ["jawOpen"]).coords.shape == (1, 15)


@pytest.mark.parametrize("name, value, message", [
    ("polygon_sizes", np.array([4, 5], np.uint8), "3s and 4s"),
    ("polygon_vertices", np.array([0, 1, 2, 3, 3, 2], np.int32), "sum of polygon_sizes"),
    ("polygon_vertices", np.array([0, 1, 2, 3, 3, 2, 5], np.int32), r"lie in \[0, 5\)"),
    ("polygon_vertices", np.array([0, 1, 2, 3, 3, 2, -1], np.int32), r"lie in \[0, 5\)"),
    ("corner_uvs", np.zeros((6, 2), np.float32), "corner_uvs"),
    ("polygon_material", np.array([2, 0], np.uint8), "indexes 3 materials, meta names 2"),
    ("vertices", np.full((5, 3), np.nan, np.float32), "NaN"),
])
def test_bad_head_arrays_raise_instead_of_crashing_blender(name, value, message):
    arrays = dict(_quad_and_triangle(), **{name: value})
    with pytest.raises(ValueError, match=message):
        headdata.head_mesh_arrays(arrays, material_count=2)


def test_shape_keys_are_absolute_positions_with_clipped_weights():
    vertices = np.arange(6, dtype=np.float32).reshape(2, 3)
    deltas = np.stack([np.ones((2, 3)), -2 * np.ones((2, 3))]).astype(np.float32)
    keys = headdata.shape_keys(vertices, deltas, np.array([0.25, 1.5]), ["jawOpen", "eyeBlink_L"])
    assert keys.names == ["jawOpen", "eyeBlink_L"]
    np.testing.assert_array_equal(keys.coords[0], (vertices + 1).ravel())
    np.testing.assert_array_equal(keys.coords[1], (vertices - 2).ravel())
    assert keys.coords.dtype == np.float32 and keys.weights.tolist() == [0.25, 1.0]


@pytest.mark.parametrize("names, deltas_shape, message", [
    (["a"], (2, 2, 3), "2 expression deltas, 2 weights and 1 names"),
    (["a", "a"], (2, 2, 3), "unique"),
    (["Basis", "a"], (2, 2, 3), "Basis"),
    (["a", "b"], (2, 3, 3), r"\(E, 2, 3\)"),
])
def test_bad_shape_keys_raise(names, deltas_shape, message):
    with pytest.raises(ValueError, match=message):
        headdata.shape_keys(np.zeros((2, 3)), np.zeros(deltas_shape), np.zeros(2), names)


def test_pose_rows_accept_rigid_transforms_only():
    rows = headdata.pose_rows({"pose": {"matrix": pose_matrix(30, (0.1, 0.2, 1.5))}})
    assert np.allclose(rows[0], [np.cos(np.pi / 6), -0.5, 0, 0.1])
    scaled = np.diag([2.0, 2.0, 2.0, 1.0]).tolist()
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0]).tolist()
    for meta in ({}, {"pose": {"matrix": scaled}}, {"pose": {"matrix": mirrored}}, {"pose": {"matrix": [[1, 0], [0, 1]]}},
                 {"pose": {"matrix": "eye"}}):
        with pytest.raises(ValueError, match="pose"):
            headdata.pose_rows(meta)


def test_model_reply_has_the_contract_shapes(model_path):
    face = head_reply_from_model(model_path, exp_weights=np.full(53, 0.1), texture_size=64)
    arrays, meta = face.arrays, face.meta
    sizes = arrays["polygon_sizes"]
    assert arrays["vertices"].shape == (KEPT_VERTICES, 3)
    assert (sizes == 4).sum() > 20 * (sizes == 3).sum()  # the model is nearly all quads
    assert arrays["expression_deltas"].shape == (53, KEPT_VERTICES, 3) and len(meta["expressions"]) == 53
    assert 0 <= arrays["corner_uvs"].min() and arrays["corner_uvs"].max() <= 1
    assert set(np.unique(arrays["polygon_material"])) == set(range(len(meta["materials"])))
    # Blender axes: the face looks toward -Y (the nose tip is the front-most point), Z is up.
    nose = arrays["vertices"][arrays["vertices"][:, 1].argmin()]
    assert abs(nose[0]) < 0.01 and arrays["vertices"][:, 2].ptp() > arrays["vertices"][:, 0].ptp()
    mesh = headdata.head_mesh_arrays(arrays, len(meta["materials"]))
    assert mesh.polygon_count == len(sizes) and len(mesh.vertex_index) == sizes.sum()


def test_irradiance_becomes_rgba_and_bad_values_are_refused():
    rgba = headdata.irradiance_colours(np.array([[0.5, 1.0, -0.1], [2.0, 0.0, 0.3]], np.float16), 2)
    assert rgba.dtype == np.float32 and rgba.shape == (2, 4)
    np.testing.assert_allclose(rgba, [[0.5, 1.0, 0.0, 1.0], [2.0, 0.0, 0.3, 1.0]], atol=1e-3)  # never negative light
    for bad in (np.zeros((3, 3)), np.zeros((2, 4)), np.array([[np.inf, 0, 0], [0, 0, 0]])):
        with pytest.raises(ValueError, match="vertex_irradiance"):
            headdata.irradiance_colours(bad, 2)
