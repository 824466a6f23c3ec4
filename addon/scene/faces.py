"""Face-mode reply -> Blender object: mesh, material, images, modifiers (Blender 3.4 through 5.0);
the helpers head mode (``heads``) builds on.

Used by the add-on's operator and by the headless batch script, so it depends on nothing but bpy
and the bpy-free ``data`` modules. API differences between versions are guarded by ``bpy.app.version``.
"""
from __future__ import annotations

import contextlib
import os

import bpy
import numpy as np
from mathutils import Matrix

from ..data import meshdata
from ..data.meshdata import BuildSettings
from ..data.photo import encode_png, png_bytes
from ..wire import options

UV_NAME = "UVMap"
PROPERTY = "faceforge"           # object custom property holding the request's metadata
DEPTH_PROPERTY = "faceforge_depth"  # object custom property pointing at the depth image (keeps it alive)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPECULAR_INPUTS = ("Specular IOR Level", "Specular")  # the Principled BSDF's specular input, 4.0+ and before


def build_mesh(name: str, vertices, faces, uvs) -> "bpy.types.Mesh":
    """A smooth-shaded triangle mesh with one UV layer, filled with ``foreach_set`` only."""
    return mesh_from_arrays(name, meshdata.mesh_arrays(vertices, faces, uvs))


def mesh_from_arrays(name: str, arrays: meshdata.MeshArrays) -> "bpy.types.Mesh":
    """A smooth-shaded mesh of any polygon sizes with one UV layer (and material slots' indices)."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(arrays.vertex_count)
    mesh.loops.add(len(arrays.vertex_index))
    mesh.polygons.add(arrays.polygon_count)
    # Indices RNA declares unsigned are set from uint32 views (validated, so non-negative): foreach_set
    # copies those as one block but converts int32 item by item (10x slower).
    if bpy.app.version >= (3, 6, 0):
        # Generic attributes take raw buffers: ~50x faster than the MeshVertex/MeshLoop wrappers.
        mesh.attributes["position"].data.foreach_set("vector", arrays.co)
        mesh.attributes[".corner_vert"].data.foreach_set("value", arrays.vertex_index)
    else:
        mesh.vertices.foreach_set("co", arrays.co)
        mesh.loops.foreach_set("vertex_index", arrays.vertex_index.view(np.uint32))
        mesh.polygons.foreach_set("loop_total", arrays.loop_total.view(np.uint32))  # from loop_start since 3.6
    mesh.polygons.foreach_set("loop_start", arrays.loop_start.view(np.uint32))
    if arrays.material_index is not None:
        mesh.polygons.foreach_set("material_index", arrays.material_index)
    if bpy.app.version >= (4, 1, 0):
        mesh.shade_smooth()  # drops the sharp_face attribute: no per-face write
    else:
        mesh.polygons.foreach_set("use_smooth", arrays.use_smooth)
    uv_layer = mesh.uv_layers.new(name=UV_NAME)
    if bpy.app.version >= (3, 5, 0):
        uv_layer.uv.foreach_set("vector", arrays.loop_uv)
    else:
        uv_layer.data.foreach_set("uv", arrays.loop_uv)
    mesh.update(calc_edges=True)
    return mesh


def image_from_png(name: str, png: bytes) -> "bpy.types.Image":
    """A packed image whose pixels are ``png``, decoded lazily: no float copy, no second encoding
    when the .blend is saved, and exporters reuse the very bytes (``png_of``)."""
    image = bpy.data.images.new(name, 1, 1, alpha=False)
    image.pack(data=png, data_len=len(png))
    image.source = "FILE"
    image.filepath_raw = f"//{name}.png"  # where "Unpack" would write it
    return image


def texture_image(name: str, texture) -> "bpy.types.Image":
    """An (H, W, 3) uint8 texture from the server (row 0 = top) as a packed sRGB PNG image."""
    return image_from_png(name, png_bytes(texture))


def png_of(image: "bpy.types.Image") -> bytes:
    """The image as PNG bytes: its packed or on-disk PNG when it has one, else its pixels encoded
    (8-bit, untouched by the scene's colour management; float pixels from linear to sRGB)."""
    if image.packed_file is not None:
        data = image.packed_file.data  # a copy on each read
    elif image.source == "FILE" and os.path.isfile(bpy.path.abspath(image.filepath_raw)):
        with open(bpy.path.abspath(image.filepath_raw), "rb") as handle:
            data = handle.read()
    else:
        data = b""
    if data[:8] == PNG_MAGIC:
        return data
    width, height = image.size
    pixels = np.empty(width * height * image.channels, np.float32)
    image.pixels.foreach_get(pixels)
    return encode_png(pixels, width, height, image.channels, linear=image.is_float)


def image_nodes(obj: "bpy.types.Object"):
    """Image texture nodes of the object's materials, slot after slot."""
    for slot in obj.material_slots:
        if slot.material is not None and slot.material.node_tree is not None:
            yield from (node for node in slot.material.node_tree.nodes if node.type == "TEX_IMAGE" and node.image)


def find_operator(idname: str, addon: str | None = None):
    """The operator ``idname`` (e.g. ``"export_scene.gltf"``), enabling its bundled ``addon`` if the
    user turned it off; None where this Blender has neither."""
    module, name = idname.split(".")
    op = getattr(getattr(bpy.ops, module), name)
    if not _registered(op) and addon:
        import addon_utils

        with contextlib.suppress(Exception):  # an add-on this version does not ship
            addon_utils.enable(addon, default_set=False)
    return op if _registered(op) else None


def _registered(op) -> bool:
    try:
        op.get_rna_type()
    except KeyError:
        return False
    return True


def select_only(objects) -> None:
    """Select exactly ``objects``, the first one active: what exporters with ``use_selection`` read."""
    view_layer = bpy.context.view_layer
    view_layer.update()  # objects linked since the last update are not in view_layer.objects yet
    for obj in view_layer.objects:
        obj.select_set(obj in objects)
    if objects:
        view_layer.objects.active = objects[0]


def texture_of(obj: "bpy.types.Object") -> "bpy.types.Image":
    """The image the object's materials read (a face's texture, a head's atlas)."""
    node = next(image_nodes(obj), None)
    if node is None:
        raise ValueError(f"{obj.name} has no textured material")
    return node.image


def map_image(name: str, values, offset: float = 0.0) -> "bpy.types.Image":
    """A one-channel map (value + ``offset``) Blender reads as float and Non-Color. Inside [0, 1]
    it is packed as a 16-bit grey PNG: steps of 1/65535 (15 um for depth in metres), a sixth of the
    size of the float EXR Blender would pack, and made in 1 ms rather than 11. Its rows are stored,
    not deflated: 16-bit maps shrink by only 20 % for 13 ms, and a compressed .blend compresses
    them anyway. Other values keep the float EXR."""
    shifted = np.asarray(values, np.float32) + np.float32(offset)
    if shifted.ndim == 2 and np.isfinite(shifted).all() and shifted.min() >= 0.0 and shifted.max() <= 1.0:
        image = image_from_png(name, png_bytes(np.rint(shifted * 65535).astype(np.uint16), level=0))
        image.colorspace_settings.name = "Non-Color"
        return image
    pixels = meshdata.scalar_pixels(values, offset)  # refuses what is not an (H, W) map
    return float_image(name, pixels.reshape(*shifted.shape, 4), colorspace="Non-Color")


def float_image(name: str, pixels: np.ndarray, colorspace: str = "") -> "bpy.types.Image":
    """(H, W, 4) float RGBA, rows bottom-up, as a packed OpenEXR image (scene-linear unless
    ``colorspace`` says otherwise)."""
    height, width = pixels.shape[:2]
    image = bpy.data.images.new(name, width, height, alpha=False, float_buffer=True)
    if colorspace:
        image.colorspace_settings.name = colorspace
    image.pixels.foreach_set(np.ascontiguousarray(pixels, np.float32).ravel())
    image.file_format = "OPEN_EXR"
    image.pack()
    return image


def face_images(name: str, arrays) -> dict:
    """Texture (sRGB PNG), detail (0.5 + detail) and depth (metres) images."""
    return {"texture": texture_image(f"{name}_texture", arrays["texture"]),
            "detail": map_image(f"{name}_detail", arrays["detail"], meshdata.DETAIL_MIDLEVEL),
            "depth": map_image(f"{name}_depth", arrays["depth"])}


def bsdf_input(node, names: tuple):
    """The first of the input sockets ``names`` the node has (Principled BSDF inputs were renamed in
    4.0: ``SPECULAR_INPUTS``); None if it has none."""
    return next((node.inputs[name] for name in names if node.inputs.get(name) is not None), None)


def _set_input(node, names: tuple, value) -> None:
    socket = bsdf_input(node, names)
    if socket is not None:
        socket.default_value = value


def node_tree(datablock) -> "bpy.types.NodeTree":
    """The shader nodes of a material or world, switched on where that is still needed (always on,
    and ``use_nodes`` deprecated, since 5.0)."""
    if bpy.app.version < (5, 0, 0):
        datablock.use_nodes = True
    return datablock.node_tree


def skin_material(name: str, texture: "bpy.types.Image", *, roughness: float = 0.55,
                  specular: float = 0.3) -> "bpy.types.Material":
    """Principled BSDF fed by the photo texture through the UV map (head mode: one per part, other
    roughness and specular for eyes and teeth)."""
    material = bpy.data.materials.new(name)
    tree = node_tree(material)
    nodes, links = tree.nodes, tree.links
    bsdf = next(node for node in nodes if node.type == "BSDF_PRINCIPLED")
    image_node = nodes.new("ShaderNodeTexImage")
    image_node.image = texture
    image_node.location = (bsdf.location.x - 400, bsdf.location.y)
    uv_node = nodes.new("ShaderNodeUVMap")
    uv_node.uv_map = UV_NAME
    uv_node.location = (image_node.location.x - 250, image_node.location.y - 100)
    links.new(uv_node.outputs["UV"], image_node.inputs["Vector"])
    links.new(image_node.outputs["Color"], bsdf.inputs["Base Color"])
    _set_input(bsdf, ("Roughness",), roughness)
    _set_input(bsdf, SPECULAR_INPUTS, specular)
    return material


def add_modifiers(obj: "bpy.types.Object", detail: "bpy.types.Image", settings: BuildSettings) -> None:
    """Laplacian smooth -> Subdivision Surface -> Displace by the detail map: native, tunable afterwards."""
    smooth = obj.modifiers.new("Smooth", "LAPLACIANSMOOTH")
    smooth.iterations = settings.smooth_iterations
    smooth.lambda_factor = settings.smooth_factor
    smooth.lambda_border = 0.0  # keep the face outline where the server put it
    smooth.show_viewport = smooth.show_render = settings.smooth_iterations > 0
    subsurf = obj.modifiers.new("Subdivision", "SUBSURF")
    subsurf.levels = settings.subdivision_levels
    subsurf.render_levels = settings.subdivision_levels
    # The exact limit surface costs ~6 s on the first evaluation of a 9k-vertex face and looks the
    # same at these levels; the plain Catmull-Clark result takes ~0.2 s.
    subsurf.use_limit_surface = False
    texture = bpy.data.textures.new(f"{obj.name}_detail", "IMAGE")
    texture.image = detail
    texture.extension = "EXTEND"
    displace = obj.modifiers.new("Detail", "DISPLACE")
    displace.texture = texture
    displace.texture_coords = "UV"
    displace.uv_layer = UV_NAME
    displace.direction = "NORMAL"
    displace.mid_level = meshdata.DETAIL_MIDLEVEL
    displace.strength = settings.detail_strength


def build_face_object(face, *, name: str, settings: BuildSettings, location=(0.0, 0.0, 0.0),
                      metadata: dict | None = None, collection=None) -> "bpy.types.Object":
    """One reconstructed face -> a linked object at ``location`` facing -Y, in metres.

    ``face`` is a ``client.FaceData`` (or anything with ``index``, ``meta`` and ``arrays``).
    ``metadata`` (source photo, server version, timings...) is stored with the face's own meta and
    ``settings`` under the object's ``faceforge`` custom property.
    """
    arrays = face.arrays
    mesh = build_mesh(name, arrays["vertices"], arrays["faces"], arrays["uvs"])
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    if "rotation" in face.meta:  # the mesh is in the face's frontal frame; the photo's view is the object's pose
        obj.rotation_mode = "QUATERNION"
        obj.rotation_quaternion = Matrix(face.meta["rotation"]).to_quaternion()
    images = face_images(obj.name, arrays)
    mesh.materials.append(skin_material(f"{obj.name}_skin", images["texture"]))
    add_modifiers(obj, images["detail"], settings)
    obj[DEPTH_PROPERTY] = images["depth"]
    obj[PROPERTY] = meshdata.idprop_value(dict(metadata or {}, face=face.meta, face_index=face.index,
                                               settings=options.as_dict(settings)))
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj
