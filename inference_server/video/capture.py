"""A video of one person -> one textured head and its performance (per-frame expression weights and
head pose), with the loaded pipeline's models.

Reading tracks the face through every frame, keeping each frame's landmarks (a few kilobytes) and one
picture per yaw band (the key frames). With the cues network (``shape_cues`` auto or network, as for
photos) each frame also keeps its thinned dense cues (~20 KB, without the mirror pass a photo's get),
read while its picture is at hand. Then the identity is fitted to the key frames, every second frame is
fitted with it, the identity is fitted again to each yaw band's calmest frame (that first pass's weakest
expressions) and every frame is fitted once more;
the head is textured from the key frames. Memory grows with the frame count by the landmarks and
cues only, never by pictures.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from addon.wire.errors import ErrorCode, ProtocolError

from addon.wire import options as schema
from addon.wire.options import frame_range

from .. import alignment
from ..head.camera import Camera
from ..limits import check_video
from ..head.reconstruct import PersonPhoto
from ..pipeline import DETECTED_AT, STAGES, FaceProgress, FaceResult, Result, Timer
from ..head.fit import View, fit_views
from .performance import KeyFrames, Track, VideoFitConfig, fit_frames, fit_identity, frame_yaw, restful_frames
from .reader import VideoReader
from .track import FaceTracker

TRACK_SHARE = 0.6   # of the progress bar: reading and tracking; then two passes over the frames, then the head


def capture_video(pipeline, path: str | Path, params: dict | None = None, *, config=None, report=None,
                  fit: VideoFitConfig = VideoFitConfig(), name: str | None = None):
    """(Result with one head face whose arrays include the ``anim_*`` arrays, Performance). ``config``
    when the caller validated the options already, else ``params``; ``video_frames`` picks the frames,
    at most ``max_video_frames`` of them. ``report`` is the pipeline's ``Reporter`` (stage, text,
    fraction, face, faces); it may raise to cancel. ``name`` is the video's name in errors."""
    report = report or (lambda *args: None)
    head = pipeline.head
    options = config or pipeline.defaults.with_params(params or {})
    check_video(options, head is not None)
    start, stop = frame_range(options.video_frames)
    timer, started = Timer(), time.perf_counter()
    with VideoReader(path, options.max_pixels, name) as reader:
        info = reader.info
        known = [count for count in (stop, info.frame_count) if count]  # the header's count may be missing
        wanted = min(known) - start if known else 0
        if wanted > options.max_video_frames:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{reader.name}: {wanted} frames to read; this server's limit "
                                                     f"is {options.max_video_frames} (max_video_frames): choose fewer "
                                                     "with video_frames START:STOP")
        stop = start + options.max_video_frames if stop is None else min(stop, start + options.max_video_frames)
        size = (info.height, info.width)
        camera = Camera.default_for(size, None)
        tracker = FaceTracker(pipeline.detector, pipeline.landmarker, options,
                              0 if options.face == "largest" else int(options.face))
        expected = max(min(known + [stop]) - start, 1)
        track, keys = Track(), KeyFrames()
        source = head.shape_source(options)
        doing = "tracking the face" + (" and reading its shape" if source == "network" else "")
        frames = reader.frames(start, stop)
        while True:
            with timer.stage("track"):
                frame = next(frames, None)
                if frame is None:
                    break
                done = len(track.time_s)
                report("track", f"{doing}: frame {done + 1} of ~{expected}", TRACK_SHARE * min(done / expected, 1.0), 0, 0)
                located = tracker.locate(frame.rgb)
            cues = None
            if located is not None and source == "network":   # timed only when run, as a photo's cues stage
                with timer.stage("cues"):
                    cues = head.cues(frame.rgb, located.landmarks_px,
                                     fit.frame_mirror_average).thinned(fit.frame_cue_points)
            track.add(frame.index, frame.time_s, located, cues)
            if located is not None:
                keys.offer(frame.index, frame.rgb, located, frame_yaw(head.basis, located.landmarks_px, camera))
    if not track.time_s:
        raise ProtocolError(ErrorCode.BAD_IMAGE, f"{reader.name}: no frames could be read in that range")
    chosen = keys.chosen(fit.min_key_sharpness)
    if not chosen:
        raise ProtocolError(ErrorCode.NO_FACE, f"{reader.name}: no face found in any of its {len(track.time_s)} frames")
    try:
        cues = [track.cues[track.position(key.index)] for key in chosen]
        head_config = replace(head.fit_config, dense_confidence=fit.dense_confidence)
        with timer.stage("fit"):
            first = fit_identity(head.model, head.basis, [key.located.landmarks_px for key in chosen], size,
                                 head_config, head.device, cues=cues)
        focal = float(np.median([fitted.focal for fitted in first]))

        def frame_progress(share: float, done: int, total: int, text: str) -> None:
            report("animate", f"{text}: frame {done + 1} of {total}", share + 0.15 * done / max(total, 1), 0, 0)

        with timer.stage("animate"):
            performance = fit_frames(head.model, head.basis, track, first[0].id_coeffs, focal, size, head_config,
                                     fit, head.device, lambda d, t: frame_progress(TRACK_SHARE, d, t, "first pass"),
                                     fit.first_pass_stride)
            rest = restful_frames(performance)
            rest_cues = [track.cues[n] for n in rest]   # None where the face was bridged over a loss
            identity = fit_identity(head.model, head.basis, [performance.landmarks[n] for n in rest], size,
                                    head_config, head.device, focal, cues=rest_cues)[0].id_coeffs
            performance = fit_frames(head.model, head.basis, track, identity, focal, size, head_config, fit,
                                     head.device, lambda d, t: frame_progress(TRACK_SHARE + 0.15, d, t,
                                                                              "expressions and pose"))
        progress = FaceProgress(timer, lambda stage, text, fraction, face, faces:
                                report(stage, text, 0.9 + 0.1 * (fraction - DETECTED_AT) / (1 - DETECTED_AT), 0, 0),
                                0, 1, STAGES["head"][3:])
        try:
            progress("fit", f"posing the head in {len(chosen)} key frames")
            fits = fit_views(head.model, [View(key.located.landmarks_px, size, focal, cue)
                                          for key, cue in zip(chosen, cues)],
                             head_config, head.device, basis=head.basis, identity=identity)
            photos = [PersonPhoto(key.rgb, key.located.points_crop, key.located.to_crop) for key in chosen]
            arrays, meta = head.reconstruct_views(photos, options, progress, fits=fits, fits_source=source)
        finally:
            progress.close()
    except ValueError as exc:  # a fit that cannot start (degenerate landmarks)
        raise ProtocolError(ErrorCode.NO_FACE, f"{reader.name}: the face could not be fitted ({exc})") from None
    performance.key_frames = [key.index for key in chosen]
    if reader.fps_guessed or not performance.fps:
        performance.fps = info.fps
    meta = {"index": 0, "crop_to_image": alignment.invert(chosen[0].located.to_crop).tolist(), **meta}
    meta["refine"] = "off: video (the texture is the key frames' colour as lit)"
    meta["video"] = {"frames": len(track.time_s), "tracked": int(performance.tracked.sum()),
                     "detections": track.detections, "fps": round(performance.fps, 3),
                     "fps_guessed": reader.fps_guessed, "first_frame": int(track.frame_index[0]),
                     "key_frames": performance.key_frames, "identity_frames": [int(track.frame_index[n]) for n in rest],
                     "focal_px": round(focal, 2)}
    elapsed = time.perf_counter() - started
    result_meta = {"image_size": [info.width, info.height], "faces_detected": 1, "skipped_faces": [], "photos": 0,
                   "timings_ms": timer.as_ms(), "frames_per_s": round(len(track.time_s) / elapsed, 2),
                   "config": schema.as_dict(options)}
    return Result(faces=[FaceResult(index=0, meta=meta, arrays=arrays | performance.as_arrays())],
                  meta=result_meta), performance


def capture_video_bytes(pipeline, data: bytes | memoryview, config, report=None):
    """``capture_video`` on a video file's bytes (a request's ``video`` frame): the decoder reads files,
    so the bytes go to a private temporary file for the length of the request."""
    if len(data) == 0:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "the video is empty (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="faceforge-video-") as folder:
        path = Path(folder) / "request-video"
        try:
            path.write_bytes(data)
        except OSError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"the server cannot store the video to read it "
                                                    f"({exc.strerror or exc})") from None
        return capture_video(pipeline, path, config=config, report=report, name="the video")
