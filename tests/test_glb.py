"""The batch's binary glTF writer and reader (``addon.glb``, bpy-free): a small curved patch
textured with the astronaut, written and parsed back. Blender's own importer reads the writer's
files of real faces in tests/test_addon_blender.py."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from addon.writers import glb
from addon.data.photo import png_bytes


def _patch(side: int = 5) -> glb.Surface:
    """A side x side grid 0.1 m wide, bulging toward -Y (where a face looks), rotated 30 degrees
    about Z and lifted 1 m: a stand-in for an evaluated face."""
    from skimage import data

    u, v = np.meshgrid(np.linspace(0, 1, side), np.linspace(0, 1, side))
    positions = np.stack([(u - 0.5) * 0.1, -0.02 * (1 - (2 * u - 1) ** 2) * (1 - (2 * v - 1) ** 2), (v - 0.5) * 0.1], -1)
    index = np.arange(side * side).reshape(side, side)
    quads = np.stack([index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]], -1).reshape(-1, 4)
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    angle = np.radians(30)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[2, 3] = 1.0
    return glb.Surface(
        name="patch", positions=positions.reshape(-1, 3).astype(np.float32),
        normals=np.tile(np.float32([0, -1, 0]), (side * side, 1)),
        uvs=np.stack([u, v], -1).reshape(-1, 2).astype(np.float32), triangles=triangles,
        triangle_material=np.zeros(len(triangles), int), looks=[glb.Look("skin", 0.55)],
        texture=png_bytes(data.astronaut()[::8, ::8]), texture_name="patch_texture", matrix=matrix)


def test_glb_holds_the_surface_in_y_up_axes_with_its_texture(tmp_path):
    surface = _patch()
    glb.write_glb(tmp_path / "p.glb", [surface])
    document, binary = glb.read_glb(tmp_path / "p.glb")
    (node,), (mesh,) = document["nodes"], document["meshes"]
    assert node["translation"] == pytest.approx([0, 1, 0])  # Blender z = 1 -> glTF y = 1
    half = np.radians(30) / 2
    assert node["rotation"] == pytest.approx([0, np.sin(half), 0, np.cos(half)], abs=1e-9)  # about Blender Z = glTF Y
    assert "scale" not in node
    (primitive,) = mesh["primitives"]
    position = document["accessors"][primitive["attributes"]["POSITION"]]
    assert position["count"] == 25 and position["max"][2] == pytest.approx(0.02, abs=1e-6)  # bulge: -Y -> +Z
    indices = document["accessors"][primitive["indices"]]
    assert indices["count"] == 3 * len(surface.triangles) and indices["componentType"] == glb.UINT16
    view = document["bufferViews"][indices["bufferView"]]
    written = np.frombuffer(binary, np.uint16, indices["count"], view["byteOffset"]).reshape(-1, 3)
    np.testing.assert_array_equal(written, surface.triangles)
    uv = document["accessors"][primitive["attributes"]["TEXCOORD_0"]]
    view = document["bufferViews"][uv["bufferView"]]
    uvs = np.frombuffer(binary, np.float32, 2 * uv["count"], view["byteOffset"]).reshape(-1, 2)
    np.testing.assert_allclose(uvs[:, 1], 1 - surface.uvs[:, 1])  # glTF's V runs down
    view = document["bufferViews"][document["images"][0]["bufferView"]]
    assert binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]] == surface.texture
    material = document["materials"][primitive["material"]]
    assert material["name"] == "skin" and material["pbrMetallicRoughness"]["roughnessFactor"] == pytest.approx(0.55)
    assert material["doubleSided"] and "extensions" not in material and "extensionsUsed" not in document
    assert all(v["byteOffset"] % 4 == 0 for v in document["bufferViews"])


def test_large_meshes_get_32_bit_indices_and_a_primitive_per_material(tmp_path):
    surface = _patch(side=260)  # 67,600 vertices: more than 16-bit indices can name
    surface.triangle_material = np.arange(len(surface.triangles)) % 2
    surface.looks = [glb.Look("skin"), glb.Look("eyes", 0.1, specular=0.25, double_sided=False)]
    glb.write_glb(tmp_path / "p.glb", [surface, _patch()])
    document, _ = glb.read_glb(tmp_path / "p.glb")
    big, small = document["meshes"]
    assert len(big["primitives"]) == 2 and len(small["primitives"]) == 1
    assert {document["accessors"][p["indices"]]["componentType"] for p in big["primitives"]} == {glb.UINT32}
    assert [document["materials"][p["material"]]["name"] for p in big["primitives"] + small["primitives"]] == \
        ["skin", "eyes", "skin"]
    assert len(document["images"]) == 2 and len(document["scenes"][0]["nodes"]) == 2
    eyes = document["materials"][1]
    assert "doubleSided" not in eyes and eyes["extensions"]["KHR_materials_specular"]["specularFactor"] == 0.5
    assert document["extensionsUsed"] == ["KHR_materials_specular"]


def _vectors(document: dict, binary: bytes, index: int) -> np.ndarray:
    """An accessor's VEC3 floats, dense or sparse (zeros where a sparse one names no row)."""
    accessor = document["accessors"][index]
    values = np.zeros((accessor["count"], 3), np.float32)
    if "bufferView" in accessor:
        view = document["bufferViews"][accessor["bufferView"]]
        values[:] = np.frombuffer(binary, np.float32, 3 * accessor["count"], view["byteOffset"]).reshape(-1, 3)
    if "sparse" in accessor:
        sparse = accessor["sparse"]
        kind = {glb.UINT16: np.uint16, glb.UINT32: np.uint32}[sparse["indices"]["componentType"]]
        rows = np.frombuffer(binary, kind, sparse["count"],
                             document["bufferViews"][sparse["indices"]["bufferView"]]["byteOffset"])
        values[rows] = np.frombuffer(binary, np.float32, 3 * sparse["count"],
                                     document["bufferViews"][sparse["values"]["bufferView"]]["byteOffset"]).reshape(-1, 3)
    return values


def test_morph_targets_are_sparse_where_that_is_smaller(tmp_path):
    surface = _patch()
    still, corner, everywhere = np.zeros((3, 25, 3), np.float32)
    corner[[3, 7]] = [[0.01, 0.0, 0.0], [0.0, 0.0, 0.02]]  # two of 25 vertices move
    everywhere[:] = [0.0, 0.003, 0.0]
    surface.targets = glb.Targets(["still", "corner", "everywhere"], np.stack([still, corner, everywhere]),
                                  [0.0, 0.5, 1.0])
    glb.write_glb(tmp_path / "p.glb", [surface])
    document, binary = glb.read_glb(tmp_path / "p.glb")
    (mesh,) = document["meshes"]
    assert mesh["extras"]["targetNames"] == ["still", "corner", "everywhere"] and mesh["weights"] == [0.0, 0.5, 1.0]
    targets = [document["accessors"][t["POSITION"]] for t in mesh["primitives"][0]["targets"]]
    assert "bufferView" not in targets[0] and "sparse" not in targets[0]  # all zeros: no data at all
    assert "bufferView" not in targets[1] and targets[1]["sparse"]["count"] == 2
    assert "bufferView" in targets[2] and "sparse" not in targets[2]
    for target, delta in zip(mesh["primitives"][0]["targets"], (still, corner, everywhere)):
        written = _vectors(document, binary, target["POSITION"])
        np.testing.assert_array_equal(written, np.stack([delta[:, 0], delta[:, 2], -delta[:, 1]], 1))  # Y up
        accessor = document["accessors"][target["POSITION"]]
        assert accessor["min"] == pytest.approx(written.min(0).tolist()) and accessor["max"] == pytest.approx(
            written.max(0).tolist())


def test_split_by_uv_only_where_a_vertex_has_two_uvs():
    corners = np.array([0, 1, 2, 0, 2, 3])
    uvs = np.float32([[0, 0], [1, 0], [1, 1], [0, 0], [1, 1], [0, 1]])
    vertex_of_corner, source, per_vertex = glb.split_by_uv(corners, uvs, 4)
    np.testing.assert_array_equal(vertex_of_corner, corners)
    np.testing.assert_array_equal(source, np.arange(4))
    assert per_vertex.dtype == np.float32 and per_vertex.shape == (4, 2)
    np.testing.assert_array_equal(per_vertex[corners], uvs)
    seam = uvs.copy()
    seam[3] = [0.5, 0.5]  # vertex 0 seen from the second triangle with another UV
    vertex_of_corner, source, per_vertex = glb.split_by_uv(corners, seam, 4)
    assert len(source) == 5 and sorted(source.tolist()) == [0, 0, 1, 2, 3]
    np.testing.assert_array_equal(source[vertex_of_corner], corners)
    np.testing.assert_array_equal(per_vertex[vertex_of_corner], seam)


def test_read_glb_rejects_what_is_not_a_glb(tmp_path):
    text = json.dumps({"asset": {"version": "2.0"}, "meshes": [{}]}).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", 4, b"BIN\x00") + b"\x01\x02\0\0"
    path = tmp_path / "x.glb"
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
    document, binary = glb.read_glb(path)
    assert document["meshes"] == [{}] and binary[:2] == b"\x01\x02"
    path.write_bytes(b"glTF" + b"\0" * 20)
    with pytest.raises(ValueError):
        glb.read_glb(path)
