"""Mesh files without Blender: OBJ (+ MTL + PNG texture), binary PLY with UVs and colours, NPZ.

OBJ and PLY are written Y-up (their usual convention; Blender's importers turn them back to Z-up);
the NPZ keeps every array exactly as the protocol carries it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = (".obj", ".ply", ".npz")


def _y_up(vertices: np.ndarray) -> np.ndarray:
    """Blender axes (Z up, face toward -Y) -> Y up, face toward +Z."""
    return np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], 1)


def write_obj(path: Path, arrays: dict) -> list[Path]:
    path = Path(path)
    texture_path = path.with_name(path.stem + "_texture.png")
    material_path = path.with_suffix(".mtl")
    Image.fromarray(np.asarray(arrays["texture"])).save(texture_path)
    material_path.write_text(f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_path.name}\n")
    vertices, uvs, faces = _y_up(arrays["vertices"]), arrays["uvs"], arrays["faces"] + 1
    lines = [f"mtllib {material_path.name}", f"o {path.stem}"]
    body = "\n".join([
        "\n".join(lines),
        "\n".join(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices),
        "\n".join(f"vt {u:.6f} {v:.6f}" for u, v in uvs),
        "usemtl face\ns 1",
        "\n".join(f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in faces),
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
    vertices, faces, uvs = _y_up(arrays["vertices"]), arrays["faces"], arrays["uvs"]
    vertex = np.zeros(len(vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("s", "<f4"), ("t", "<f4"),
                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = vertices.T
    vertex["s"], vertex["t"] = uvs.T
    colours = vertex_colours(np.asarray(arrays["texture"]), uvs)
    vertex["red"], vertex["green"], vertex["blue"] = colours.T
    face = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"], face["i"] = 3, faces
    header = (f"ply\nformat binary_little_endian 1.0\ncomment FaceForge face mesh, Y up, metres\n"
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
