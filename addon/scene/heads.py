"""Head-mode reply -> one Blender object: the model's topology, a material per part, the 53
expressions as shape keys, the pose as the object's transform (Blender 3.4 through 5.0).

Mesh, images, materials and the modifier stack come from ``faces`` (face mode's helpers); what is
new here is the per-part materials, the shape keys and the pose. Arrays are checked by the
bpy-free ``headdata`` before any datablock is created, so a bad reply leaves the file untouched.
"""
from __future__ import annotations

import bpy
from mathutils import Matrix

from ..data import headdata, lighting, meshdata
from ..wire import options
from . import faces

BASIS = "Basis"
IRRADIANCE_ATTRIBUTE = "photo_irradiance"  # the fitted lighting per vertex: albedo x this = the photo's look
DISPLACEMENT_ATTRIBUTE = "refine_displacement"  # refine full's metres along the normals, already applied
# Surface looks per reply material (roughness, specular); any other name looks like skin.
PART_LOOKS = {"eyes_sclera": (0.08, 0.5), "iris": (0.08, 0.5), "teeth": (0.25, 0.5),
              "gums_tongue": (0.35, 0.5), "mouth": (0.6, 0.2)}
SKIN_LOOK = (0.55, 0.3)


def key_points(key: "bpy.types.ShapeKey"):
    """A shape key's points for ``foreach_get/set("co")``: ``points`` (newer Blenders) takes a raw
    buffer, ~1000x faster than the older ``data``."""
    return key.points if "points" in key.bl_rna.properties else key.data


def add_shape_keys(obj: "bpy.types.Object", keys: headdata.ShapeKeys) -> None:
    """The mesh's own vertices as the basis, one relative key per expression set to its weight."""
    obj.shape_key_add(name=BASIS, from_mix=False)
    for name, coords, weight in zip(keys.names, keys.coords, keys.weights):
        key = obj.shape_key_add(name=name, from_mix=False)
        key_points(key).foreach_set("co", coords)
        key.value = float(weight)
    obj.data.shape_keys.use_relative = True
    obj.data.update()


def show_neutral(obj: "bpy.types.Object", neutral: bool) -> None:
    """Mute (or unmute) every expression key: the neutral head, fitted weights kept for later."""
    for key in obj.data.shape_keys.key_blocks[1:]:
        key.mute = neutral


def part_materials(obj: "bpy.types.Object", names, texture: "bpy.types.Image") -> None:
    """One material slot per reply material, in the reply's order, all reading the one atlas."""
    for part in names:
        roughness, specular = PART_LOOKS.get(part, SKIN_LOOK)
        obj.data.materials.append(faces.skin_material(f"{obj.name}_{part}", texture, roughness=roughness,
                                                      specular=specular))


def build_head_object(face, *, name: str, settings: meshdata.BuildSettings, metadata: dict | None = None,
                      collection=None) -> "bpy.types.Object":
    """One head reply -> a linked object posed by ``meta["pose"]["matrix"]``, in metres.

    ``face`` is a ``client.FaceData`` (``index``, ``meta``, ``arrays``) whose meta has
    ``geometry == "head"``. ``metadata`` is stored like ``faces.build_face_object`` stores it.
    """
    arrays, meta = face.arrays, face.meta
    materials = [str(part) for part in meta["materials"]]
    mesh_arrays = headdata.head_mesh_arrays(arrays, len(materials))
    keys = headdata.shape_keys(arrays["vertices"], arrays["expression_deltas"], arrays["expression_weights"],
                               meta["expressions"])
    pose = Matrix(headdata.pose_rows(meta))
    irradiance = (headdata.irradiance_colours(arrays["vertex_irradiance"], len(arrays["vertices"]))
                  if "vertex_irradiance" in arrays else None)
    displacement = (headdata.vertex_values(arrays["vertex_displacement"], (len(arrays["vertices"]),),
                                           "vertex_displacement") if "vertex_displacement" in arrays else None)
    obj = bpy.data.objects.new(name, faces.mesh_from_arrays(name, mesh_arrays))
    images = faces.face_images(obj.name, arrays)
    part_materials(obj, materials, images["texture"])
    add_shape_keys(obj, keys)
    obj.matrix_world = pose
    faces.add_modifiers(obj, images["detail"], settings)
    if irradiance is not None:  # refined: the photo's lighting, for an Attribute node to multiply in
        irradiance_attribute(obj.data, irradiance)
    if displacement is not None:  # refine full: already in the vertices; kept to mask or scale it
        obj.data.attributes.new(DISPLACEMENT_ATTRIBUTE, "FLOAT", "POINT").data.foreach_set("value", displacement)
    obj[faces.DEPTH_PROPERTY] = images["depth"]
    obj[faces.PROPERTY] = meshdata.idprop_value(dict(metadata or {}, face=meta, face_index=face.index,
                                                     settings=options.as_dict(settings)))
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


def irradiance_attribute(mesh: "bpy.types.Mesh", rgba) -> None:
    """(V, 4) linear irradiance as a point colour attribute ``IRRADIANCE_ATTRIBUTE``."""
    attribute = mesh.color_attributes.new(IRRADIANCE_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attribute.data.foreach_set("color", rgba.ravel())


def photo_world(name: str, coefficients) -> "bpy.types.World":
    """A world whose light is the fitted lighting (``lighting.environment``): the head's albedo
    renders about as bright and as lit from the side as the photo showed it. Camera rays see
    Blender's default grey instead: a second-order environment is no backdrop (dark behind the
    photographer, strongly tinted where the fit's colour channels part)."""
    world = bpy.data.worlds.new(name)
    tree = faces.node_tree(world)
    nodes, links = tree.nodes, tree.links
    light = next(node for node in nodes if node.type == "BACKGROUND")
    output = next(node for node in nodes if node.type == "OUTPUT_WORLD")
    environment = nodes.new("ShaderNodeTexEnvironment")
    environment.image = faces.float_image(f"{name}_environment", lighting.environment(coefficients))
    links.new(environment.outputs["Color"], light.inputs["Color"])
    light.inputs["Strength"].default_value = 1.0
    backdrop = nodes.new("ShaderNodeBackground")
    backdrop.inputs["Color"].default_value = (*lighting.BACKDROP, 1.0)
    path, mix = nodes.new("ShaderNodeLightPath"), nodes.new("ShaderNodeMixShader")
    links.new(path.outputs["Is Camera Ray"], mix.inputs["Fac"])
    links.new(light.outputs["Background"], mix.inputs[1])
    links.new(backdrop.outputs["Background"], mix.inputs[2])
    links.new(mix.outputs["Shader"], output.inputs["Surface"])
    for node, location in ((environment, (-600, 0)), (path, (-300, 300)), (light, (-300, 0)), (backdrop, (-300, -150)),
                           (mix, (0, 0)), (output, (250, 0))):
        node.location = location
    return world
