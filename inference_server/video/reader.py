"""Frames of a video file, one at a time: OpenCV's own FFmpeg build (inside the opencv wheel MediaPipe
already needs) decodes MP4/MOV/MKV/WebM/AVI; nothing holds more than the current frame.

Checks come from the container's header before any frame is decoded (frame size against
``max_pixels``, a plausible frame rate), and every decoded frame is checked again (a header may lie).
Times are the decoder's own presentation times where it gives them (phones record variable frame
rates), else index / fps. The rotation a phone records in the file's metadata is applied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from addon.wire.errors import ErrorCode, ProtocolError

MIN_FPS, MAX_FPS = 1.0, 1000.0


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frame_count: int      # as the container says (0 when it does not); the frames read may differ

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps


@dataclass(frozen=True)
class Frame:
    index: int            # 0-based position in the video
    time_s: float
    rgb: np.ndarray       # (H, W, 3) uint8


class VideoReader:
    """Open a video file; ``frames()`` yields its frames in order within ``frame_range``."""

    def __init__(self, path: str | Path, max_pixels: int, name: str | None = None):
        path = Path(path)
        self.name = name or path.name
        if not path.is_file():
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"{self.name}: no such video file")
        self._capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"{self.name}: not a video this decoder can read "
                                                     "(MP4, MOV, MKV, WebM or AVI expected)")
        self._capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        width, height = (int(self._capture.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = max(int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
        if width <= 0 or height <= 0:
            self.close()
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"{self.name}: the video has no picture stream")
        if width * height > max_pixels:
            self.close()
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{self.name}: frames are {width}x{height}; the limit is "
                                                     f"{max_pixels:,} pixels (max_pixels)")
        if not (MIN_FPS <= fps <= MAX_FPS and math.isfinite(fps)):
            fps = 30.0  # an unreadable rate: times fall back to the common one, and the summary says so
            self.fps_guessed = True
        else:
            self.fps_guessed = False
        self.info = VideoInfo(width, height, fps, count)
        self.max_pixels = max_pixels

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
        """Frames ``start`` <= index < ``stop``: skipped ones are grabbed, not decoded into pictures."""
        index = 0
        while stop is None or index < stop:
            if index < start:
                if not self._capture.grab():
                    return
                index += 1
                continue
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                return
            if bgr.ndim != 3 or bgr.shape[0] * bgr.shape[1] > self.max_pixels:
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"{self.name}: frame {index} is not a picture of the "
                                                         "size the header gave")
            position = self._capture.get(cv2.CAP_PROP_POS_MSEC)
            time_s = position / 1000 if self.info.frame_count and position > 0 else index / self.info.fps
            yield Frame(index, float(time_s), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1


def write_mp4(path: str | Path, frames, fps: float) -> None:
    """Frames (H, W, 3) uint8 RGB -> an MPEG-4 Part 2 file (the encoder every OpenCV wheel carries);
    used for synthetic test videos."""
    writer = None
    try:
        for rgb in frames:
            if writer is None:
                height, width = rgb.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                if not writer.isOpened():
                    raise OSError(f"cannot write a video to {path}")
            writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
