"""Binary glTF 2.0 (bpy-free): the batch's writer for faces and heads, and a reader.

Why not Blender's exporter for these: the glTF add-on in Blender 3.4 finds shared vertices by
sorting every corner as a structured numpy record, 0.3 of its 0.46 s for a subdivided face (about
214k corners), more than the server needs to reconstruct the face. The batch already holds the
evaluated mesh as arrays (``addon.writers.surfaces``) and the texture as PNG bytes, so writing the file is
only packing those arrays. A head (the unmodified mesh, a morph target per shape key) takes 0.5 s
in 3.4's exporter and 0.2 s here (0.1 s in 5.0), most of it reading the 53 shape keys. Tests read
the results back with Blender's own glTF importer and compare them with its exporter's.

Axes follow Blender's exporter: glTF is Y up, Blender ``(x, y, z)`` -> ``(x, z, -y)``.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..wire.axes import quaternion

GENERATOR = "FaceForge"
Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)  # Blender -> glTF axes
FLOAT, UINT16, UINT32 = 5126, 5123, 5125
COMPONENT_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.uint32): UINT32, np.dtype(np.uint16): UINT16}
LINEAR, LINEAR_MIPMAP_LINEAR, TRIANGLES = 9729, 9987, 4
SPECULAR = "KHR_materials_specular"


@dataclass
class Look:
    """A material as the file carries it: a name, the texture, the surface's roughness and
    specular level (Blender's Principled BSDF: 0.5 is the 4 % reflectance of IOR 1.5), and whether
    back faces show (a face mask is an open surface)."""

    name: str
    roughness: float = 0.55
    specular: float = 0.5
    double_sided: bool = True


@dataclass
class Targets:
    """Morph targets: per target the offset of every vertex from the surface's positions, its name
    (``mesh.extras.targetNames``, as Blender's importer and exporter name shape keys) and weight."""

    names: list                    # [str]
    deltas: np.ndarray             # (K, N, 3) float32, Blender axes
    weights: list                  # [float]


@dataclass
class Animation:
    """A video's performance on one node: key times and, per key, the morph-target weights (in the
    targets' order) and the node's transform, as Blender object matrices (Blender axes)."""

    times: np.ndarray              # (F,) seconds from the first key
    weights: np.ndarray            # (F, K)
    matrices: np.ndarray           # (F, 4, 4)


@dataclass
class Surface:
    """One object as the file carries it: one vertex per (mesh vertex, UV) pair, so every vertex
    has one position, normal and UV; in the object's own frame (Blender axes, metres), placed in
    the world by ``matrix``."""

    name: str
    positions: np.ndarray          # (N, 3) float32
    normals: np.ndarray            # (N, 3) float32, unit
    uvs: np.ndarray                # (N, 2) float32, origin bottom-left (Blender's)
    triangles: np.ndarray          # (T, 3) vertex indices, counter-clockwise seen from outside
    triangle_material: np.ndarray  # (T,) index into ``looks``
    looks: list                    # [Look]
    texture: bytes                 # PNG every look reads
    texture_name: str              # the image's name in the file
    matrix: np.ndarray = field(default_factory=lambda: np.eye(4))  # (4, 4) object -> world, Blender axes
    targets: Targets | None = None
    animation: Animation | None = None


def split_by_uv(corner_vertex: np.ndarray, uvs: np.ndarray, vertex_count: int) -> tuple:
    """``(new vertex per corner, mesh vertex per new vertex, UV per new vertex)``: one new vertex
    per distinct (vertex, UV) pair; the mesh's own vertices when each has one UV."""
    uvs = np.ascontiguousarray(uvs, np.float32)
    packed = uvs.view(np.uint64).ravel()  # each UV pair as one 8-byte word: 3x faster to scatter and compare
    per_vertex = np.zeros(vertex_count, np.uint64)
    per_vertex[corner_vertex] = packed
    if np.array_equal(per_vertex[corner_vertex], packed):
        return corner_vertex, np.arange(vertex_count), per_vertex.view(np.float32).reshape(vertex_count, 2)
    keys = np.ascontiguousarray(np.column_stack([corner_vertex.astype(np.uint32), uvs.view(np.uint32)]))
    _, first, inverse = np.unique(keys.view(np.dtype((np.void, 12))).ravel(), return_index=True, return_inverse=True)
    return inverse.ravel(), corner_vertex[first], uvs[first]


def node_transform(matrix: np.ndarray) -> dict:
    """Translation, rotation and scale of a Blender object matrix, in glTF's axes (defaults left out)."""
    converted = Y_UP @ np.asarray(matrix, np.float64) @ Y_UP.T
    scale = np.linalg.norm(converted[:3, :3], axis=0)
    transform = {"rotation": quaternion(converted[:3, :3] / np.where(scale > 0, scale, 1.0))}
    if np.any(converted[:3, 3]):
        transform["translation"] = converted[:3, 3].tolist()
    if not np.allclose(scale, 1.0, atol=1e-6):
        transform["scale"] = scale.tolist()
    return transform


class _Buffer:
    """The binary chunk: views appended 4-byte aligned, accessors describing them."""

    def __init__(self):
        self.chunks, self.length, self.views, self.accessors = [], 0, [], []

    def view(self, data) -> int:
        """``data``: bytes or a contiguous array, kept as it is (written, not copied, at the end)."""
        data = memoryview(data).cast("B")
        self.views.append({"buffer": 0, "byteOffset": self.length, "byteLength": data.nbytes})
        self.chunks.append(data)
        padding = -data.nbytes % 4
        if padding:
            self.chunks.append(b"\0" * padding)
        self.length += data.nbytes + padding
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, bounds: tuple | None = None) -> int:
        """``bounds``: ``(min, max)`` per component, which positions require."""
        entry = {"bufferView": self.view(np.ascontiguousarray(array)), "componentType": COMPONENT_TYPES[array.dtype],
                 "count": len(array), "type": kind}
        if bounds is not None:
            entry["min"], entry["max"] = np.asarray(bounds[0]).tolist(), np.asarray(bounds[1]).tolist()
        self.accessors.append(entry)
        return len(self.accessors) - 1

    def sparse_accessor(self, array: np.ndarray, kind: str, bounds: tuple) -> int:
        """An accessor that stores only the non-zero rows (glTF ``sparse``: the rest read as zeros)
        when that is smaller: a morph target moves a part of the head and leaves the rest."""
        moving = np.flatnonzero(np.any(array != 0, axis=1))
        index_type = _index_type(len(array))
        if len(moving) * (np.dtype(index_type).itemsize + array.itemsize * array.shape[1]) >= array.nbytes:
            return self.accessor(array, kind, bounds)
        entry = {"componentType": FLOAT, "count": len(array), "type": kind,
                 "min": np.asarray(bounds[0]).tolist(), "max": np.asarray(bounds[1]).tolist()}
        if len(moving):  # none: no bufferView and no sparse, which reads as all zeros
            entry["sparse"] = {"count": len(moving),
                               "indices": {"bufferView": self.view(moving.astype(index_type)),
                                           "componentType": COMPONENT_TYPES[np.dtype(index_type)]},
                               "values": {"bufferView": self.view(np.ascontiguousarray(array[moving]))}}
        self.accessors.append(entry)
        return len(self.accessors) - 1


def _index_type(count: int):
    """The smallest unsigned integer type that numbers ``count`` vertices."""
    return np.uint16 if count < 65536 else np.uint32


def _bounds(vectors: np.ndarray) -> tuple:
    """Per-component ``(min, max)`` of (..., N, 3) vectors over N, reduced along a contiguous copy of
    each component: numpy's reduce across (N, 3) rows is 10x slower (80 ms for a head's targets)."""
    components = np.ascontiguousarray(np.moveaxis(vectors, -1, 0))
    return components.min(-1).T, components.max(-1).T


def _y_up(vectors: np.ndarray) -> np.ndarray:
    """Blender's ``(x, y, z)`` as glTF's ``(x, z, -y)``, for arrays of any leading shape."""
    converted = np.empty(vectors.shape, np.float32)
    converted[..., 0], converted[..., 1], converted[..., 2] = vectors[..., 0], vectors[..., 2], -vectors[..., 1]
    return converted


def _add_surface(document: dict, buffer: _Buffer, surface: Surface) -> None:
    """A node, a mesh with one primitive per used material, the materials and the embedded texture."""
    document["images"].append({"name": Path(surface.texture_name).stem, "mimeType": "image/png",
                               "bufferView": buffer.view(surface.texture)})
    document["textures"].append({"sampler": 0, "source": len(document["images"]) - 1})
    texture, first_material = len(document["textures"]) - 1, len(document["materials"])
    for look in surface.looks:
        material = {"name": look.name, "pbrMetallicRoughness": {
            "baseColorTexture": {"index": texture}, "metallicFactor": 0.0, "roughnessFactor": look.roughness}}
        if look.double_sided:
            material["doubleSided"] = True
        if look.specular != 0.5:  # the extension's default factor 1 is Blender's 0.5
            material["extensions"] = {SPECULAR: {"specularFactor": 2.0 * look.specular}}
            used = document.setdefault("extensionsUsed", [])
            if SPECULAR not in used:
                used.append(SPECULAR)
        document["materials"].append(material)
    uvs = surface.uvs * np.float32([1, -1]) + np.float32([0, 1])  # glTF's UV origin is the top left
    positions = _y_up(surface.positions)
    attributes = {"POSITION": buffer.accessor(positions, "VEC3", bounds=_bounds(positions)),
                  "NORMAL": buffer.accessor(_y_up(surface.normals), "VEC3"),
                  "TEXCOORD_0": buffer.accessor(uvs.astype(np.float32), "VEC2")}
    index_type = _index_type(len(surface.positions))
    mesh = {"name": surface.name, "primitives": []}
    targets = []
    if surface.targets is not None:  # positions only: per-target normals triple the file for a shading nuance
        deltas = _y_up(surface.targets.deltas)
        lows, highs = _bounds(deltas)
        targets = [{"POSITION": buffer.sparse_accessor(delta, "VEC3", bounds=(low, high))}
                   for delta, low, high in zip(deltas, lows, highs)]
        mesh["weights"] = list(surface.targets.weights)
        mesh["extras"] = {"targetNames": list(surface.targets.names)}
    for index in np.unique(surface.triangle_material):
        triangles = surface.triangles[surface.triangle_material == index].astype(index_type).ravel()
        primitive = {"attributes": attributes, "indices": buffer.accessor(triangles, "SCALAR"),
                     "material": first_material + int(index), "mode": TRIANGLES}
        if targets:
            primitive["targets"] = targets
        mesh["primitives"].append(primitive)
    document["meshes"].append(mesh)
    document["nodes"].append({"name": surface.name, "mesh": len(document["meshes"]) - 1,
                              **node_transform(surface.matrix)})
    document["scenes"][0]["nodes"].append(len(document["nodes"]) - 1)
    if surface.animation is not None and len(surface.animation.times):
        _add_animation(document, buffer, surface.name, len(document["nodes"]) - 1, surface.animation)


def _add_animation(document: dict, buffer: _Buffer, name: str, node: int, animation: Animation) -> None:
    """One glTF animation: linear samplers over the key times for the morph weights, the rotation and
    the translation of ``node`` (what Blender's importer turns back into shape-key and object keys)."""
    times = np.asarray(animation.times, np.float32)
    moments = buffer.accessor(times, "SCALAR", bounds=([float(times.min())], [float(times.max())]))
    transforms = [node_transform(matrix) for matrix in animation.matrices]
    outputs = {"weights": (np.asarray(animation.weights, np.float32).ravel(), "SCALAR"),
               "rotation": (np.array([t["rotation"] for t in transforms], np.float32), "VEC4"),
               "translation": (np.array([t.get("translation", [0.0, 0.0, 0.0]) for t in transforms], np.float32),
                               "VEC3")}
    samplers, channels = [], []
    for path, (values, kind) in outputs.items():
        samplers.append({"input": moments, "output": buffer.accessor(values, kind), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})
    document.setdefault("animations", []).append({"name": name, "samplers": samplers, "channels": channels})


def write_glb(path: Path, surfaces: list) -> None:
    """One node and mesh per surface, its texture embedded once (the PNG bytes as they are)."""
    buffer = _Buffer()
    document = {"asset": {"version": "2.0", "generator": GENERATOR}, "scene": 0, "scenes": [{"nodes": []}],
                "nodes": [], "meshes": [], "materials": [], "textures": [], "images": [],
                "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR}]}
    for surface in surfaces:
        _add_surface(document, buffer, surface)
    document["bufferViews"], document["accessors"] = buffer.views, buffer.accessors
    document["buffers"] = [{"byteLength": buffer.length}]
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned; JSON pads with spaces
    with open(path, "wb") as handle:
        handle.write(struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + 8 + buffer.length))
        handle.write(struct.pack("<I4s", len(text), b"JSON") + text)
        handle.write(struct.pack("<I4s", buffer.length, b"BIN\0"))
        for chunk in buffer.chunks:
            handle.write(chunk)


def read_glb(path: Path) -> tuple[dict, bytes]:
    """Parse a binary glTF: ``(json, bin_chunk)``. Raises ValueError on a malformed file."""
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise ValueError("file too short for GLB")
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2 or length != len(data):
        raise ValueError(f"bad GLB header: magic={magic!r} version={version} length={length} (file {len(data)})")
    offset, document, binary = 12, None, b""
    while offset < length:
        chunk_length, chunk_type = struct.unpack_from("<I4s", data, offset)
        body = data[offset + 8: offset + 8 + chunk_length]
        if chunk_type == b"JSON":
            document = json.loads(body.decode("utf-8"))
        elif chunk_type == b"BIN\x00":
            binary = body
        offset += 8 + chunk_length
    if document is None:
        raise ValueError("GLB has no JSON chunk")
    return document, binary
