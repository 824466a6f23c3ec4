"""Typed settings for the reconstruction pipeline and the server."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from addon.wire.protocol import DEFAULT_MAX_MESSAGE_BYTES, ErrorCode, ProtocolError


@dataclass(frozen=True)
class ReconstructionConfig:
    """Per-request options. Every field can be overridden by a request's ``params``."""

    face: str = "largest"          # "largest", "all", or a face index ("0", "1", ...; 0 = largest)
    resolution: int = 100          # mesh grid cells across the face width (~vertices = resolution^2)
    depth_size: int = 256          # side of the returned depth map, in pixels of the aligned crop
    texture_size: int = 512        # side of the aligned crop used as texture
    crop_margin: float = 0.3       # border added on every side of the MTCNN box, as a fraction of its size
    contour_inset: float = 0.015   # pull the face contour inward (fraction of face width) to keep background off the rim
    smooth_iterations: int = 0     # Taubin smoothing passes (Blender does its own with a modifier)
    detail_sigma: float = 3.0      # low-pass radius (texture pixels) of the detail map's high-pass
    max_pixels: int = 40_000_000   # refuse larger images before decoding them
    detect_max_side: int = 640     # photos are downscaled to this for detection (boxes map back to full size)
    min_face_fraction: float = 0.05  # smallest face searched for, as a fraction of the photo's longer side;
                                     # MTCNN's cost grows steeply as this shrinks (0.03 ~ 2x slower)
    min_face_score: float = 0.90

    def with_params(self, params: Mapping[str, Any]) -> "ReconstructionConfig":
        """Apply request params, rejecting unknown keys and wrong types with a clear message."""
        known = {f.name: f for f in fields(self)}
        changes = {}
        for key, value in params.items():
            if key not in known:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown option {key!r}; known: {', '.join(sorted(known))}")
            default = getattr(self, key)
            try:
                changes[key] = str(value) if isinstance(default, str) else type(default)(value)
            except (TypeError, ValueError):
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"option {key!r} must be {type(default).__name__}") from None
        config = replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        limits = {"resolution": (8, 1000), "depth_size": (16, 2048), "texture_size": (64, 4096),
                  "smooth_iterations": (0, 100), "max_pixels": (1, 500_000_000), "detect_max_side": (64, 8192)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"option {name!r}={value} outside [{lo}, {hi}]")
        if not 0.005 <= self.min_face_fraction <= 1.0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"option 'min_face_fraction'={self.min_face_fraction} outside [0.005, 1]")
        if self.face not in ("largest", "all") and not self.face.isdigit():
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"option 'face' must be 'largest', 'all' or an index, not {self.face!r}")


@dataclass(frozen=True)
class ServerConfig:
    """Socket-side settings; the device belongs to the pipeline, which the server receives ready-made."""

    bind: str = "tcp://127.0.0.1:5555"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue: int = 32                          # reconstruct requests waiting beyond this get a "busy" reply
