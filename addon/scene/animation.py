"""A head's performance as Blender animation: one F-curve per expression shape key and per rotation and
location channel, keyed at every scene frame the video covers (Blender 3.4 through 5.0).

Each curve is made by one ``keyframe_insert`` (which builds the action, and from Blender 4.4 its slot
and channel bag, the way each version wants) and then filled in one ``foreach_set``: a minute of
video is thousands of keys per curve, far too slow to insert one by one.
"""
from __future__ import annotations

import math
import os

import bpy

from ..data.animation import Keys, video_lens_mm

LINEAR = 1  # FCurveKeyframePoint.interpolation's enum index of 'LINEAR' (CONSTANT 0, LINEAR 1, BEZIER 2)


def fcurve(id_data, data_path: str, index: int):
    """The F-curve of ``data_path[index]`` in ``id_data``'s action, in any Blender's layout."""
    action = id_data.animation_data.action
    curves = getattr(action, "fcurves", None)
    if curves is None or (hasattr(action, "layers") and len(action.layers)):
        from bpy_extras import anim_utils

        curves = anim_utils.action_get_channelbag_for_slot(action, id_data.animation_data.action_slot).fcurves
    return next(c for c in curves if c.data_path == data_path and c.array_index == index)


def _fill(owner, prop: str, index: int, frames, values) -> None:
    """Key ``owner.prop[index]`` (``index`` -1: a scalar property) at every frame with its value."""
    owner.keyframe_insert(prop, index=index, frame=float(frames[0]))
    data_path = owner.path_from_id(prop)
    curve = fcurve(owner.id_data, data_path, max(index, 0))
    points = curve.keyframe_points
    points.add(len(frames) - len(points))
    coords = [0.0] * (2 * len(frames))
    coords[0::2] = [float(f) for f in frames]
    coords[1::2] = [float(v) for v in values]
    points.foreach_set("co", coords)
    points.foreach_set("interpolation", [LINEAR] * len(frames))
    curve.update()


def animate_head(obj: "bpy.types.Object", keys: Keys, names) -> None:
    """Key ``obj``'s expression shape keys (``names``, in the keys' weight order), its rotation (as a
    quaternion) and its location (relative to where it stands now)."""
    if len(keys.frames) == 0:
        return
    blocks = obj.data.shape_keys.key_blocks
    for column, name in enumerate(names):
        _fill(blocks[name], "value", -1, keys.frames, keys.weights[:, column])
    obj.rotation_mode = "QUATERNION"
    for axis in range(4):
        _fill(obj, "rotation_quaternion", axis, keys.frames, keys.quaternions[:, axis])
    base = tuple(obj.location)
    for axis in range(3):
        _fill(obj, "location", axis, keys.frames, keys.locations[:, axis] + base[axis])
    scene = bpy.context.scene
    scene.frame_start = min(scene.frame_start, int(keys.frames[0]))
    scene.frame_end = max(scene.frame_end, int(keys.frames[-1]))


def video_camera(name: str, keys: Keys, head_location, focal_px: float, size: tuple, video_path: str,
                 collection=None, first_frame: int = 0) -> "bpy.types.Object":
    """A camera where the video's was, relative to the head as built (at ``head_location`` on the first key),
    with the video's focal length and, when ``video_path`` is a file, the video as its background: its frame
    ``first_frame`` (0-based, where the fitted range began) at the scene's first frame. The render resolution
    becomes the video's, so the background and the head line up; the camera becomes the scene's when it has none."""
    width, height = (int(v) for v in size)
    scene = bpy.context.scene
    data = bpy.data.cameras.new(name)
    data.sensor_fit, data.sensor_width = "HORIZONTAL", 36.0
    data.lens = video_lens_mm(focal_px, width)
    camera = bpy.data.objects.new(name, data)
    camera.rotation_euler = (math.pi / 2, 0.0, 0.0)  # looking along +Y, Z up: the pose's camera view
    camera.location = tuple(float(h - o) for h, o in zip(head_location, keys.origin))
    if video_path and os.path.isfile(video_path):
        clip = bpy.data.movieclips.load(video_path)
        clip.frame_start = scene.frame_start - first_frame
        background = data.background_images.new()
        background.source, background.clip = "MOVIE_CLIP", clip
        background.alpha = 1.0
        data.show_background_images = True
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    (collection or scene.collection).objects.link(camera)
    if scene.camera is None:
        scene.camera = camera
    return camera
