"""Mesh files without Blender: OBJ (+ MTL + PNG texture), binary PLY with UVs and colours, binary
glTF, NPZ.

OBJ and PLY are written Y-up (their usual convention; Blender's importers turn them back to Z-up);
the NPZ keeps every array exactly as the protocol carries it. A head is written with its fitted
expression applied (OBJ keeps its quads); its pose stays out of the file, as in Blender's object data.
A head's glb is its neutral shape with the 53 expressions as named morph targets at their fitted
weights (the add-on's glb writer, ``addon.writers.glb``, fed from the reply instead of Blender objects);
either geometry's glb is the server's mesh, without the add-on's smoothing, subdivision and detail.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = (".obj", ".ply", ".glb", ".npz")


@dataclass
class Polygons:
    """Either geometry's mesh as polygons with per-corner UVs."""

    vertices: np.ndarray   # (V, 3) Blender axes
    sizes: np.ndarray      # (P,) corners per polygon
    corners: np.ndarray    # (sum sizes,) vertex indices
    uvs: np.ndarray        # (T, 2) texture coordinates
    corner_uv: np.ndarray  # (sum sizes,) index into uvs (a face's UVs are per vertex, a head's per corner)

    def corner_triangles(self) -> tuple:
        """``((T, 3) corner indices, (T,) polygon of each triangle)``: fan triangles, quads split along
        0-2 as the model was (every polygon's first triangle, then the quads' second ones)."""
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        quads = starts[self.sizes == 4]
        triangles = np.concatenate([np.stack([starts, starts + 1, starts + 2], 1),
                                    np.stack([quads, quads + 2, quads + 3], 1)])
        return triangles, np.concatenate([np.arange(len(starts)), np.nonzero(self.sizes == 4)[0]])

    def triangles(self) -> np.ndarray:
        """(T, 3) vertex indices of the fan triangles (``corner_triangles``)."""
        return self.corners[self.corner_triangles()[0]]

    def vertex_uvs(self) -> np.ndarray:
        """One UV per vertex (the last corner's at seams), for formats without per-corner UVs."""
        uvs = np.zeros((len(self.vertices), 2), np.float32)
        uvs[self.corners] = self.uvs[self.corner_uv]
        return uvs


def polygons(arrays: dict) -> Polygons:
    if "polygon_sizes" in arrays:  # head mode (protocol.HEAD_ARRAYS)
        weights = np.asarray(arrays["expression_weights"], np.float32)
        vertices = arrays["vertices"] + np.tensordot(weights, arrays["expression_deltas"], 1)
        corners = arrays["polygon_vertices"]
        return Polygons(vertices, arrays["polygon_sizes"].astype(np.int64), corners, arrays["corner_uvs"],
                        np.arange(len(corners)))
    faces = arrays["faces"].ravel()
    return Polygons(arrays["vertices"], np.full(len(faces) // 3, 3), faces, arrays["uvs"], faces)


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
    corners = iter(zip(mesh.corners + 1, mesh.corner_uv + 1))
    lines = [f"mtllib {material_path.name}", f"o {path.stem}"]
    body = "\n".join([
        "\n".join(lines),
        "\n".join(f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in _y_up(mesh.vertices)),
        "\n".join(f"vt {u:.6f} {v:.6f}" for u, v in mesh.uvs),
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


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit normals of a triangle mesh (counter-clockwise triangles face outward)."""
    corners = vertices[triangles]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(normals, triangles[:, k], cross)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return (normals / np.where(length > 0, length, 1)).astype(np.float32)


def glb_surface(arrays: dict, meta: dict | None = None, name: str = "face"):
    """One reply face as ``addon.writers.glb.Surface``: a vertex per (vertex, UV) pair, triangles, a material
    per head part (``meta["materials"]``), and for a head its expressions as morph targets."""
    from addon.writers.glb import Look, Surface, Targets, split_by_uv

    meta = meta or {}
    mesh = polygons(arrays)
    head = "polygon_sizes" in arrays
    vertices = np.asarray(arrays["vertices"], np.float32)  # a head's neutral shape: the expressions are targets
    corner_triangles, polygon_of_triangle = mesh.corner_triangles()
    new_vertex, source, uvs = split_by_uv(mesh.corners.astype(np.int64), mesh.uvs[mesh.corner_uv], len(vertices))
    triangles = new_vertex[corner_triangles]
    if head:
        material = np.asarray(arrays["polygon_material"], np.int64)[polygon_of_triangle]
        looks = [Look(str(part)) for part in meta.get("materials") or range(int(material.max()) + 1)]
        names = [str(n) for n in meta.get("expressions") or range(len(arrays["expression_deltas"]))]
        targets = Targets(names, np.asarray(arrays["expression_deltas"], np.float32)[:, source],
                          [float(w) for w in arrays["expression_weights"]])
    else:
        material, looks, targets = np.zeros(len(triangles), np.int64), [Look(name)], None
    png = io.BytesIO()
    Image.fromarray(np.asarray(arrays["texture"])).save(png, "PNG")
    return Surface(name=name, positions=vertices[source], normals=vertex_normals(vertices, mesh.corners[corner_triangles])[source],
                   uvs=uvs, triangles=triangles, triangle_material=material, looks=looks, texture=png.getvalue(),
                   texture_name=f"{name}_texture.png", targets=targets)


def write_glb(path: Path, arrays: dict, meta: dict | None = None) -> list[Path]:
    from addon.writers.glb import write_glb as write_surfaces

    write_surfaces(Path(path), [glb_surface(arrays, meta, Path(path).stem)])
    return [Path(path)]


def write_npz(path: Path, arrays: dict) -> list[Path]:
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return [Path(path)]


def write(path: Path, arrays: dict, meta: dict | None = None) -> list[Path]:
    """Write by suffix; returns every file written. ``meta``: the face's reply metadata (a head's
    expression and material names, for the glb)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".glb":
        return write_glb(Path(path), arrays, meta)
    writers = {".obj": write_obj, ".ply": write_ply, ".npz": write_npz}
    if suffix not in writers:
        raise ValueError(f"unsupported output {suffix!r}; use one of {', '.join(SUFFIXES)}")
    return writers[suffix](Path(path), arrays)
