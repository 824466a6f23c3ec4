"""Blender objects -> ``glb.Surface`` arrays (Blender 3.4 through 5.0): faces as the viewport shows
them, heads as their mesh holds them with a morph target per shape key.

One depsgraph evaluation (modifiers applied) read with ``foreach_get`` into whole buffers;
vertices are split only where the UVs differ, so a face with one UV chart keeps its vertex count.
Normals are the vertex normals: every polygon the add-on builds is smooth shaded.
"""
from __future__ import annotations

import bpy
import numpy as np
from mathutils import Quaternion

from ..scene import animation, faces, heads
from .glb import Animation, Look, Surface, Targets, split_by_uv


def _read(collection, attribute: str, dtype, count: int, width: int = 1) -> np.ndarray:
    values = np.empty(count * width, dtype)
    collection.foreach_get(attribute, values)
    return values.reshape(count, width) if width > 1 else values


def _uvs(mesh) -> np.ndarray:
    layer = mesh.uv_layers.active
    if layer is None:
        return np.zeros((len(mesh.loops), 2), np.float32)
    if bpy.app.version >= (3, 5, 0):
        return _read(layer.uv, "vector", np.float32, len(mesh.loops), 2)
    return _read(layer.data, "uv", np.float32, len(mesh.loops), 2)


def _normals(mesh) -> np.ndarray:
    if hasattr(mesh, "vertex_normals"):  # 3.5+
        return _read(mesh.vertex_normals, "vector", np.float32, len(mesh.vertices), 3)
    return _read(mesh.vertices, "normal", np.float32, len(mesh.vertices), 3)


def _read_unsigned(collection, attribute: str, count: int) -> np.ndarray:
    """A count or index RNA declares unsigned (``loop_start``; ``vertex_index`` and ``loop_total``
    before 3.6): foreach_get copies it as one block into uint32, but item by item into int32
    (10-60x slower)."""
    return _read(collection, attribute, np.uint32, count).view(np.int32)


def _corner_vertices(mesh) -> np.ndarray:
    if bpy.app.version >= (3, 6, 0):  # a raw attribute: ~10x faster than MeshLoop.vertex_index
        return _read(mesh.attributes[".corner_vert"].data, "value", np.int32, len(mesh.loops))
    return _read_unsigned(mesh.loops, "vertex_index", len(mesh.loops))


def _triangles(mesh) -> tuple:
    """``(corner triples, material per triangle)``. Triangles and quads are split as Blender's own
    tessellation splits them (0-1-2, 0-2-3) without reading ``loop_triangles``, which costs more
    than every other array together; larger polygons take Blender's triangles."""
    count = len(mesh.polygons)
    starts = _read_unsigned(mesh.polygons, "loop_start", count)
    if bpy.app.version >= (3, 6, 0):  # polygons are offsets into the corners
        sizes = np.diff(starts, append=np.int32(len(mesh.loops)))
    else:
        sizes = _read_unsigned(mesh.polygons, "loop_total", count)
    layer = mesh.attributes.get("material_index")  # a plain attribute since 3.4; absent: all 0
    materials = _read(layer.data, "value", np.int32, count) if layer is not None else np.zeros(count, np.int32)
    if sizes.size and sizes.max() > 4:
        mesh.calc_loop_triangles()
        count = len(mesh.loop_triangles)
        return (_read(mesh.loop_triangles, "loops", np.int32, count, 3),
                _read(mesh.loop_triangles, "material_index", np.int32, count))
    quads = sizes == 4
    triangles = np.concatenate([np.stack([starts, starts + 1, starts + 2], 1),
                                np.stack([starts[quads], starts[quads] + 2, starts[quads] + 3], 1)])
    return triangles, np.concatenate([materials, materials[quads]])


def _input(node, names: tuple, default: float) -> float:
    socket = faces.bsdf_input(node, names) if node is not None else None
    return float(socket.default_value) if socket is not None else default


def _looks(obj) -> list:
    looks = []
    for slot in obj.material_slots:
        material = slot.material
        bsdf = None
        if material is not None and material.node_tree is not None:
            bsdf = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        looks.append(Look(material.name if material is not None else obj.name,
                          roughness=_input(bsdf, ("Roughness",), 0.5),
                          specular=_input(bsdf, faces.SPECULAR_INPUTS, 0.5),
                          double_sided=material is None or not material.use_backface_culling))
    return looks or [Look(obj.name)]


def _key_positions(key, count: int) -> np.ndarray:
    return _read(heads.key_points(key), "co", np.float32, count, 3)


def _targets(mesh, source: np.ndarray) -> tuple:
    """``(basis positions, Targets)`` of a mesh's relative shape keys, each key as its offset from
    the key it is relative to, for the vertices ``source`` names; muted keys are left out, as
    Blender's glTF exporter leaves them out."""
    count, keys = len(mesh.vertices), mesh.shape_keys
    basis = keys.reference_key
    shown = [key for key in keys.key_blocks if key != basis and not key.mute]
    positions = {basis.name: _key_positions(basis, count)}
    deltas = np.empty((len(shown), count, 3), np.float32)
    for index, key in enumerate(shown):
        relative = key.relative_key
        if relative.name not in positions:
            positions[relative.name] = _key_positions(relative, count)
        np.subtract(_key_positions(key, count), positions[relative.name], out=deltas[index])
    return positions[basis.name], Targets([key.name for key in shown], deltas[:, source],
                                          [float(key.value) for key in shown])


def _surface(obj, mesh, matrix, *, morphs: bool = False) -> Surface:
    corner_loops, triangle_material = _triangles(mesh)
    vertex_of_corner, source, uvs = split_by_uv(_corner_vertices(mesh), _uvs(mesh), len(mesh.vertices))
    if morphs:
        positions, targets = _targets(mesh, source)
    else:
        positions, targets = _read(mesh.vertices, "co", np.float32, len(mesh.vertices), 3), None
    image = faces.texture_of(obj)
    return Surface(name=obj.name, positions=positions[source], normals=_normals(mesh)[source], uvs=uvs,
                   triangles=vertex_of_corner[corner_loops], triangle_material=triangle_material,
                   looks=_looks(obj), texture=faces.png_of(image), texture_name=image.name,
                   matrix=np.array(matrix, np.float64), targets=targets)


def evaluated(objects) -> list:
    """Each mesh object as the viewport shows it (modifiers, shape-key mix), from one evaluation.
    An evaluated mesh object's ``data`` is the mesh with every modifier applied; it is read in
    place, as no ``to_mesh()`` copy is needed to read it -- the copy also drops the normals the
    evaluation cached, which cost another 6 ms to recompute for a 54k-vertex face on 3.4."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    shown = [obj.evaluated_get(depsgraph) for obj in objects]
    return [_surface(obj, view.data, view.matrix_world) for obj, view in zip(objects, shown)]


def with_shape_keys(objects) -> list:
    """Each mesh object as its data holds it -- the basis shape, no modifiers -- with one morph target
    per shape key (weights: the keys' values) and the object's transform. Heads are written this way:
    a morph target must have the vertex count of its mesh, which the modifiers would change. A video's
    head also carries its keys as an animation."""
    surfaces = []
    for obj in objects:
        surface = _surface(obj, obj.data, obj.matrix_world, morphs=obj.data.shape_keys is not None)
        if surface.targets is not None:
            surface.animation = _animation(obj, surface.targets.names)
        surfaces.append(surface)
    return surfaces


def _animation(obj, names) -> Animation | None:
    """The object's keys (``scene.animation``) sampled at its keyed frames; None when it has none."""
    if obj.animation_data is None or obj.animation_data.action is None:
        return None
    try:
        rotation = [animation.fcurve(obj, "rotation_quaternion", axis) for axis in range(4)]
        location = [animation.fcurve(obj, "location", axis) for axis in range(3)]
    except StopIteration:
        return None
    frames = [point.co[0] for point in rotation[0].keyframe_points]
    keys = obj.data.shape_keys
    weights = np.empty((len(frames), len(names)), np.float32)
    for column, name in enumerate(names):
        block = keys.key_blocks[name]
        try:
            curve = animation.fcurve(keys, block.path_from_id("value"), 0)
            weights[:, column] = [curve.evaluate(frame) for frame in frames]
        except (StopIteration, AttributeError):
            weights[:, column] = block.value
    scale = np.diag([*obj.scale, 1.0])
    matrices = np.empty((len(frames), 4, 4))
    for row, frame in enumerate(frames):
        w, x, y, z = (curve.evaluate(frame) for curve in rotation)
        matrix = np.eye(4)
        matrix[:3, :3] = np.array(Quaternion((w, x, y, z)).normalized().to_matrix())
        matrix[:3, 3] = [curve.evaluate(frame) for curve in location]
        matrices[row] = matrix @ scale
    scene = bpy.context.scene
    times = (np.asarray(frames) - frames[0]) / (scene.render.fps / scene.render.fps_base)
    return Animation(times, weights, matrices)
