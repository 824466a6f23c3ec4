"""The fitted lighting as a Blender world: the environment the add-on paints from a head reply's
spherical-harmonics lighting (``addon.lighting``, bpy-free) must light a diffuse surface as the
refinement's shading model says the photo was lit -- checked by integrating the environment here,
and by rendering a sphere with Cycles in bpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from addon.data import lighting
from inference_server.head import sh as server_sh
from tests.addon_fixtures import bpy_module  # noqa: F401 (fixture)
from tests.head_fixtures import head_reply_from_model, model_path  # noqa: F401 (fixture)

SIDE_LIGHT = server_sh.directional((1.0, 0.0, 0.3), colour=(1.0, 0.9, 0.8), ambient=(0.15, 0.15, 0.15))


def _irradiance(environment: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """What a Lambertian surface receives from the environment, divided by pi as Blender's diffuse
    BSDF divides it: the shading factor a render multiplies the albedo by."""
    height = environment.shape[0]
    cosine = np.clip(normals @ lighting.directions(height).reshape(-1, 3).T, 0.0, None)
    return (cosine * lighting.solid_angles(height).ravel()) @ environment[..., :3].reshape(-1, 3) / math.pi


def test_the_environment_shades_a_diffuse_surface_as_the_fitted_lighting_does():
    environment = lighting.environment(SIDE_LIGHT)
    assert environment.shape == (32, 64, 4) and environment.dtype == np.float32 and environment.min() >= 0
    normals = server_sh.fibonacci_sphere(300)
    wanted = server_sh.irradiance(normals, SIDE_LIGHT)
    error = np.abs(_irradiance(environment, normals) - wanted) / wanted
    assert np.median(error) < 0.03 and np.percentile(error, 90) < 0.08
    clamped = np.clip(np.pi * server_sh.radiance_basis(lighting.directions(32)) @ SIDE_LIGHT, 0, None)
    naive = np.abs(_irradiance(clamped, normals) - wanted) / wanted  # what clamping the negative lobes gives
    assert np.median(naive) > 5 * np.median(error)


def test_uniform_light_is_a_uniform_environment_of_its_irradiance():
    environment = lighting.environment(server_sh.directional((0, 0, 1), (0, 0, 0), ambient=(0.5, 0.25, 1.0)))
    np.testing.assert_allclose(environment[..., :3], np.broadcast_to([0.5, 0.25, 1.0], (32, 64, 3)), rtol=5e-3)


@pytest.mark.parametrize("meta", [{}, {"lighting": {"sh": [[1, 2, 3]] * 9, "frame": "camera"}},
                                  {"lighting": {"sh": [[1, 2]] * 9, "frame": "blender world"}},
                                  {"lighting": {"sh": [[float("nan")] * 3] * 9, "frame": "blender world"}}])
def test_replies_without_usable_lighting_give_none(meta):
    assert lighting.photo_lighting(meta) is None


def test_a_sphere_rendered_in_the_photo_world_is_lit_like_the_fit(bpy_module, tmp_path):
    """Cycles, a white diffuse sphere, an orthographic camera looking along +Y: every pixel's value is
    the irradiance factor at its normal, which must match the fitted lighting's."""
    from addon.scene import heads

    bpy = bpy_module
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.world = heads.photo_world("photo", SIDE_LIGHT)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=64, ring_count=32, radius=1.0)
    bpy.ops.object.shade_smooth()
    material = bpy.data.materials.new("white")
    if bpy.app.version < (5, 0, 0):
        material.use_nodes = True
    tree = material.node_tree
    diffuse = tree.nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Color"].default_value = (1, 1, 1, 1)
    output = next(node for node in tree.nodes if node.type == "OUTPUT_MATERIAL")
    tree.links.new(diffuse.outputs[0], output.inputs["Surface"])
    bpy.context.object.data.materials.append(material)
    bpy.ops.object.camera_add(location=(0, -6, 0), rotation=(math.pi / 2, 0, 0))
    scene.camera = bpy.context.object
    scene.camera.data.type, scene.camera.data.ortho_scale = "ORTHO", 2.2
    scene.render.engine, scene.cycles.samples, scene.cycles.use_denoising = "CYCLES", 128, False
    scene.render.resolution_x = scene.render.resolution_y = 48
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = str(tmp_path / "sphere.exr")
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(str(tmp_path / "sphere.exr"))
    pixels = np.array(image.pixels[:], np.float32).reshape(48, 48, 4)[..., :3]
    centre = (np.arange(48) + 0.5) / 48 * 2.2 - 1.1
    x, z = np.meshgrid(centre, centre)  # rows bottom-up: image up is world +Z, image right world +X
    inside = x ** 2 + z ** 2 < 0.8
    normals = np.stack([x[inside], -np.sqrt(1 - x[inside] ** 2 - z[inside] ** 2), z[inside]], 1)
    wanted = server_sh.irradiance(normals, SIDE_LIGHT)
    error = np.abs(pixels[inside] - wanted) / wanted
    assert np.median(error) < 0.05, np.median(error)
    assert pixels[24, 40, 0] > 3 * pixels[24, 8, 0]  # lit from +X: the right side
    np.testing.assert_allclose(pixels[0, 0], lighting.BACKDROP, atol=1e-3)  # the camera sees grey, not the light


def test_a_refined_head_lights_the_scene_only_when_asked(bpy_module, model_path):
    from addon.data.meshdata import BuildSettings
    from addon.scene.build import build_reconstruction
    from addon.wire.client import Reconstruction

    bpy = bpy_module
    face = head_reply_from_model(model_path, texture_size=64)
    face.meta["lighting"] = {"sh": SIDE_LIGHT.tolist(), "frame": "blender world"}
    reply = Reconstruction(meta={}, faces=[face])
    for asked in (False, True):
        bpy.ops.wm.read_homefile(use_empty=True)
        before = bpy.context.scene.world
        build_reconstruction(reply, photo="/photos/lit.png", settings=BuildSettings(photo_lighting=asked), metadata={})
        world = bpy.context.scene.world
        assert (world is not before) == asked
    assert world.name == "lit_lighting"
    (node,) = [n for n in world.node_tree.nodes if n.type == "TEX_ENVIRONMENT"]
    assert node.image.packed_file is not None and tuple(node.image.size) == (64, 32)
    np.testing.assert_allclose(np.array(node.image.pixels[:]).reshape(32, 64, 4), lighting.environment(SIDE_LIGHT),
                               atol=1e-5)
