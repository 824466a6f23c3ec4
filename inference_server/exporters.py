"""Mesh files without Blender: OBJ (+ MTL + PNG texture), binary PLY with UVs and colours, NPZ.

OBJ and PLY are written Y-up (their usual convention; Blender's importers turn them back to Z-up);
the NPZ keeps every array exactly as the protocol carries it. A head is written with its fitted
expression applied (OBJ keeps its quads); its pose stays out of the file, as in Blender's object data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = (".obj", ".ply", ".npz")


@dataclass
class Polygons:
    """Either geometry's mesh as polygons with per-corner UVs."""

    vertices: np.ndarray   # (V, 3) Blender axes
    sizes: np.ndarray      # (P,) corners per polygon
    corners: np.ndarray    # (sum sizes,) vertex indices
    corner_uvs: np.ndarray  # (sum sizes, 2)

    def triangles(self) -> np.ndarray:
        """(T, 3) fan triangles (quads split along 0-2, as the model was)."""
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        tris = [np.stack([self.corners[starts], self.corners[starts + 1], self.corners[starts + 2]], 1)]
        quads = starts[self.sizes == 4]
        tris.append(np.stack([self.corners[quads], self.corners[quads + 2], self.corners[quads + 3]], 1))
        return np.concatenate(tris)

    def vertex_uvs(self) -> np.ndarray:
        """One UV per vertex (the last corner's at seams), for formats without per-corner UVs."""
        uvs = np.zeros((len(self.vertices), 2), np.float32)
        uvs[self.corners] = self.corner_uvs
        return uvs


def polygons(arrays: dict) -> Polygons:
    if "polygon_sizes" in arrays:  # head mode (protocol.HEAD_ARRAYS)
        weights = np.asarray(arrays["expression_weights"], np.float32)
        vertices = arrays["vertices"] + np.tensordot(weights, arrays["expression_deltas"], 1)
        return Polygons(vertices, arrays["polygon_sizes"].astype(np.int64), arrays["polygon_vertices"],
                        arrays["corner_uvs"])
    faces = arrays["faces"]
    return Polygons(arrays["vertices"], np.full(len(faces), 3), faces.ravel(), arrays["uvs"][faces.ravel()])


def _y_up(vertices: np.ndarray) -> np.ndarray:
    """Blender axes (Z up, face toward -Y) -> Y up, face toward +Z."""
    return np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], 1)


def write_obj(path: Path, arrays: dict) -> list[Path]:
    path = Path(path)
    texture_path = path.with_name(path.stem + "_texture.png")
    material_path = path.with_suffix(".mtl")
    Image.fromarray(np.asarray(arrays["texture"])).save(texture_path)
    material_path.write_text(f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_path.name}\n")
    mesh = polygons(arrays)
    corners = iter(zip(mesh.corners + 1, np.arange(1, len(mesh.corners) + 1)))
    lines = [f"mtllib {material_path.name}", f"o {path.stem}"]
    body = "\n".join([
        "\n".join(lines),
        "\n".join(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in _y_up(mesh.vertices)),
        "\n".join(f"vt {u:.6f} {v:.6f}" for u, v in mesh.corner_uvs),
        "usemtl face\ns 1",
        "\n".join("f " + " ".join(f"{v}/{t}" for v, t in (next(corners) for _ in range(size))) for size in mesh.sizes),
    ])
    path.write_text(body + "\n")
    return [path, material_path, texture_path]


def vertex_colours(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Texture colour under each vertex (nearest texel)."""
    height, width = texture.shape[:2]
    cols = np.clip((uvs[:, 0] * width).astype(np.int64), 0, width - 1)
    rows = np.clip(((1.0 - uvs[:, 1]) * height).astype(np.int64), 0, height - 1)
    return texture[rows, cols]


def write_ply(path: Path, arrays: dict) -> list[Path]:
    mesh = polygons(arrays)
    vertices, faces, uvs = _y_up(mesh.vertices), mesh.triangles(), mesh.vertex_uvs()
    vertex = np.zeros(len(vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("s", "<f4"), ("t", "<f4"),
                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = vertices.T
    vertex["s"], vertex["t"] = uvs.T
    colours = vertex_colours(np.asarray(arrays["texture"]), uvs)
    vertex["red"], vertex["green"], vertex["blue"] = colours.T
    face = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"], face["i"] = 3, faces
    header = (f"ply\nformat binary_little_endian 1.0\ncomment FaceForge mesh, Y up, metres\n"
              f"element vertex {len(vertex)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"property float s\nproperty float t\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(face)}\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as out:
        out.write(header.encode("ascii"))
        out.write(vertex.tobytes())
        out.write(face.tobytes())
    return [Path(path)]


def write_npz(path: Path, arrays: dict) -> list[Path]:
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return [Path(path)]


def write(path: Path, arrays: dict) -> list[Path]:
    """Write by suffix; returns every file written."""
    writers = {".obj": write_obj, ".ply": write_ply, ".npz": write_npz}
    suffix = Path(path).suffix.lower()
    if suffix not in writers:
        raise ValueError(f"unsupported output {suffix!r}; use one of {', '.join(SUFFIXES)}")
    return writers[suffix](Path(path), arrays)
