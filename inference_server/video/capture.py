"""A video of one person -> one textured head and its performance (per-frame expression weights and
head pose), with the loaded pipeline's models.

Two passes, and only the second is per frame: reading tracks the face through every frame (keeping
each frame's landmarks, a few kilobytes, and one picture per yaw band for the key frames); then the
identity is fitted to the key frames, the head built and textured from them, and every frame fitted
with that identity. Memory grows with the frame count by the landmarks only, never by pictures.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from addon.wire.errors import ErrorCode, ProtocolError

from addon.wire import options as schema

from ..head.camera import Camera
from ..head.reconstruct import PersonPhoto
from ..pipeline import DETECTED_AT, STAGES, FaceProgress, FaceResult, Result, Timer
from .performance import KeyFrames, Performance, Track, VideoFitConfig, fit_frames, fit_identity, frame_yaw
from .reader import VideoReader
from .track import FaceTracker

TRACK_SHARE = 0.6   # of the progress bar: reading and tracking; the rest is fitting


def capture_video(pipeline, path: str | Path, params: dict | None = None, frame_range: tuple[int, int | None] = (0, None),
                  report=None, config: VideoFitConfig = VideoFitConfig()):
    """(Result with one head face whose arrays include the ``anim_*`` arrays, Performance). ``report``
    is the pipeline's ``Reporter`` (stage, text, fraction, face, faces); it may raise to cancel."""
    report = report or (lambda *args: None)
    head = pipeline.head
    if head is None:
        raise ProtocolError(ErrorCode.NO_MODEL, "a video makes a head, which needs the head model "
                                                "(`python -m inference_server model fetch`)")
    options = pipeline.defaults.with_params(params or {})
    if options.face == "all":
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a video follows one face: choose face 'largest' or a number")
    timer, started = Timer(), time.perf_counter()
    start, stop = frame_range
    with VideoReader(path, options.max_pixels) as reader:
        info = reader.info
        size = (info.height, info.width)
        camera = Camera.default_for(size, None)
        tracker = FaceTracker(pipeline.detector, pipeline.landmarker, options,
                              0 if options.face == "largest" else int(options.face))
        expected = max((min(stop, info.frame_count) if stop is not None and info.frame_count else
                        stop or info.frame_count) - start, 1)
        track, keys = Track(), KeyFrames()
        with timer.stage("track"):
            for frame in reader.frames(start, stop):
                done = len(track.time_s)
                report("track", f"tracking the face: frame {done + 1} of ~{expected}",
                       TRACK_SHARE * min(done / expected, 1.0), 0, 0)
                located = tracker.locate(frame.rgb)
                track.add(frame.index, frame.time_s, located)
                if located is not None:
                    keys.offer(frame.index, frame.rgb, located, frame_yaw(head.basis, located.landmarks_px, camera))
    if not track.time_s:
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{reader.name}: no frames could be read in that range")
    chosen = keys.chosen(config.min_key_sharpness)
    if not chosen:
        raise ProtocolError(ErrorCode.NO_FACE, f"{reader.name}: no face found in any of its {len(track.time_s)} frames")
    progress = FaceProgress(timer, lambda stage, text, fraction, face, faces:
                            report(stage, text, TRACK_SHARE + 0.2 * (fraction - DETECTED_AT) / (1 - DETECTED_AT), 0, 0),
                            0, 1, STAGES["head"][3:])
    try:
        progress("fit", f"fitting the head to {len(chosen)} key frames")
        fits = fit_identity(head.model, head.basis, chosen, size, head.fit_config, head.device)
        photos = [PersonPhoto(key.rgb, key.located.points_crop, key.located.to_crop) for key in chosen]
        arrays, meta = head.reconstruct_views(photos, options, progress, fits=fits)
    finally:
        progress.close()
    focal = float(np.median([fit.focal for fit in fits]))

    def frame_progress(done: int, total: int) -> None:
        report("animate", f"expressions and pose: frame {done + 1} of {total}",
               TRACK_SHARE + 0.2 + 0.2 * done / max(total, 1), 0, 0)

    with timer.stage("animate"):
        performance = fit_frames(head.model, head.basis, track, fits[0].id_coeffs, focal, size, head.fit_config,
                                 config, head.device, frame_progress)
    performance.key_frames = [key.index for key in chosen]
    if reader.fps_guessed or not performance.fps:
        performance.fps = info.fps
    meta["refine"] = "off: video (the texture is the key frames' colour as lit)"
    meta["video"] = {"frames": len(track.time_s), "tracked": int(performance.tracked.sum()),
                     "detections": track.detections, "fps": round(performance.fps, 3),
                     "fps_guessed": reader.fps_guessed, "first_frame": int(track.frame_index[0]),
                     "key_frames": performance.key_frames, "focal_px": round(focal, 2)}
    elapsed = time.perf_counter() - started
    result_meta = {"image_size": [info.width, info.height], "faces_detected": 1, "skipped_faces": [], "photos": 0,
                   "timings_ms": timer.as_ms(), "frames_per_s": round(len(track.time_s) / elapsed, 2),
                   "config": schema.as_dict(options)}
    return Result(faces=[FaceResult(index=0, meta=meta, arrays=arrays | performance.as_arrays())],
                  meta=result_meta), performance

