"""The one way from a reply to the scene, for the panel and the batch: face-mode and head-mode
objects side by side, a video's head animated, and the photo's fitted lighting as the world."""
from __future__ import annotations

import bpy

from ..data import animation as performance, lighting, meshdata
from ..data.meshdata import BuildSettings
from . import animation, faces, heads

FACE_GAP_M = 0.05  # space between the faces of one photo when several come back


def build_reconstruction(reconstruction, *, photo: str, settings: BuildSettings, metadata: dict,
                         location=(0.0, 0.0, 0.0), collection=None) -> list:
    """The one way from a reply to the scene (panel and batch): one object per face, named after the
    photo (``meshdata.object_name``), side by side around ``location``, each with ``metadata``; a
    video's head is keyed and (``video_camera``) gets a camera like the video's. Returns the face objects.

    ``reconstruction`` is a ``client.Reconstruction``; ``metadata`` comes from
    ``meshdata.reconstruction_metadata``."""
    replies = sorted(reconstruction.faces, key=lambda face: face.index)
    spans = [(float(f.arrays["vertices"][:, 0].min()), float(f.arrays["vertices"][:, 0].max())) for f in replies]
    offsets = meshdata.face_offsets([hi - lo for lo, hi in spans], FACE_GAP_M) if len(replies) > 1 else [0.0]
    x, y, z = location
    objects = []
    for face, offset, (lo, hi) in zip(replies, offsets, spans):
        shift = offset - (lo + hi) / 2 if len(replies) > 1 else 0.0
        name = meshdata.object_name(photo, face.index, len(replies))
        if face.meta.get("geometry") == "head":
            keys = performance_keys(face)  # checked before anything is made
            obj = heads.build_head_object(face, name=name, settings=settings, metadata=metadata,
                                          collection=collection)
            obj.location = (x + shift, y, z)  # posed like the photo, placed where the user asked
            heads.show_neutral(obj, settings.neutral_expression)
            if keys is not None:
                base = tuple(obj.location)
                animation.animate_head(obj, keys, [str(n) for n in face.meta["expressions"]])
                if settings.video_camera and "video" in face.meta:  # beside the heads, not among them
                    video = face.meta["video"]
                    animation.video_camera(f"{name}_camera", keys, base, video["focal_px"],
                                           reconstruction.meta["image_size"], photo, collection,
                                           first_frame=int(video.get("first_frame", 0)))
        else:
            obj = faces.build_face_object(face, name=name, settings=settings, location=(x + shift, y, z),
                                          metadata=metadata, collection=collection)
        objects.append(obj)
    if settings.photo_lighting:
        fitted = next((c for c in (lighting.photo_lighting(f.meta) for f in replies) if c is not None), None)
        if fitted is not None:  # one world per scene: the first (largest) face's lighting
            bpy.context.scene.world = heads.photo_world(f"{meshdata.object_name(photo, 0, 1)}_lighting", fitted)
    return objects


def performance_keys(face):
    """A video's head: its keys at the scene's frame rate from the scene's first frame; else None."""
    if not performance.has_performance(face.arrays):
        return None
    scene = bpy.context.scene
    return performance.performance_keys(face.arrays, len(face.meta["expressions"]),
                                        scene.render.fps / scene.render.fps_base, scene.frame_start)
