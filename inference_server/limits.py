"""The server operator's ceilings on what one request may cost, and the cost estimates checked against them.

Option ranges (``addon.wire.options``) bound every option; these ceilings let an operator bound a
request further: a request may ask for less, never for more, and what exceeds a ceiling is refused
with ``too_large`` naming the option before any work is done. The photo's pixel ceiling is the
``max_pixels`` LIMIT option (checked from the image header before decoding); the reply size is
estimated from the options before the request runs and again, per face count, once faces are
detected; the time per request is checked at every stage boundary.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from addon.wire import options
from addon.wire.errors import ErrorCode, ProtocolError

MB = 1024 * 1024
# Bytes per face of a reply, measured (resolution 400 -> 138k vertices, 274k triangles): vertices
# and uvs 20 B per vertex, triangles 12 B each, about 0.86 vertices per resolution^2.
_MESH_BYTES_PER_CELL = 40
_TEXTURE_BYTES_PER_PIXEL = 3 + 4   # RGB texture + float32 detail map
_DEPTH_BYTES_PER_PIXEL = 4 + 1     # float32 depth + bool mask
_FIXED_BYTES_PER_FACE = 64 * 1024  # landmarks, metadata
# Head mode: the model's shared arrays (expression deltas 15.6 MB, polygons and corner UVs 1.2 MB) come once
# from the head_model op, not per face; a face carries its vertices (0.29 MB), a float16 detail map, with
# refinement its float16 vertex irradiance (0.15 MB) and with refine full its displacement (0.1 MB). The
# atlas is twice texture_size across, at most 2048 (head/reconstruct.py MAX_ATLAS).
_HEAD_MESH_BYTES = 640 * 1024
_HEAD_ATLAS_BYTES_PER_PIXEL = 3 + 2  # RGB albedo + float16 detail map
_HEAD_ATLAS_MAX = 2048
# A video's performance per frame: 53 weights, a 3x3 rotation and a translation (float32), frame, time, flag.
_ANIM_BYTES_PER_FRAME = 4 * (53 + 9 + 3) + 4 + 8 + 1


@dataclass(frozen=True)
class RequestLimits:
    """Ceilings per request; ``resolution``, ``texture_size`` and ``depth_size`` cap those options."""

    resolution: int = int(options.BY_NAME["resolution"].maximum)
    texture_size: int = int(options.BY_NAME["texture_size"].maximum)
    depth_size: int = int(options.BY_NAME["depth_size"].maximum)
    reply_bytes: int = 64 * MB
    request_seconds: float = 120.0  # a head at every option's maximum takes about 30 s on a busy CPU

    CAPPED_OPTIONS = ("resolution", "texture_size", "depth_size")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check(self, config, head: bool = False) -> None:
        """Refuse a request (``too_large``, naming the option) whose options exceed a ceiling or whose
        reply for one face would exceed the reply size. ``head``: the request gets head geometry."""
        for name in self.CAPPED_OPTIONS:
            value = getattr(config, name)
            if value > getattr(self, name):
                raise ProtocolError(ErrorCode.TOO_LARGE, f"option {name!r}={value} exceeds this server's limit "
                                                         f"{getattr(self, name)}; a request may only lower it")
        self.check_reply(config, faces=1, head=head)

    def check_reply(self, config, faces: int, head: bool = False) -> None:
        """Refuse before the per-face work when ``faces`` faces would make a reply over ``reply_bytes``."""
        per_face = face_reply_bytes(config, head)
        if per_face * faces <= self.reply_bytes:
            return
        if faces > 1:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"option 'face'={config.face!r} found {faces} faces: the reply "
                                f"would be about {per_face * faces / MB:.0f} MB, over this server's limit of "
                                f"{self.reply_bytes / MB:.0f} MB; ask for one face or lower texture_size")
        costs = _costs(config, head)
        biggest = max(costs, key=costs.get)
        raise ProtocolError(ErrorCode.TOO_LARGE, f"option {biggest!r}={getattr(config, biggest)} makes the reply "
                            f"about {per_face / MB:.0f} MB, over this server's limit of {self.reply_bytes / MB:.0f} MB")


def check_photo_count(count: int, config, head: bool) -> None:
    """Several photos of one person make one head: at most ``max_photos`` of them, and only in head mode."""
    if count > config.max_photos:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"the request carries {count} photos; this server's limit is "
                                                 f"{config.max_photos} (max_photos)")
    if count > 1 and config.face == "all":
        raise ProtocolError(ErrorCode.BAD_REQUEST, "several photos of one person make one head: choose one face per "
                                                   "photo (face largest or an index), not 'all'")
    if count > 1 and not head:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{count} photos of one person make one head: that needs geometry "
                                                   "head (auto with a head model installed), not the face mesh")


def _costs(config, head: bool) -> dict:
    """Reply bytes per face by the option that sets them."""
    if head:
        atlas = min(_HEAD_ATLAS_MAX, 2 * config.texture_size)
        return {"texture_size": _HEAD_ATLAS_BYTES_PER_PIXEL * atlas ** 2, "geometry": _HEAD_MESH_BYTES,
                "depth_size": _DEPTH_BYTES_PER_PIXEL * config.depth_size ** 2}
    return {"texture_size": _TEXTURE_BYTES_PER_PIXEL * config.texture_size ** 2,
            "resolution": _MESH_BYTES_PER_CELL * config.resolution ** 2,
            "depth_size": _DEPTH_BYTES_PER_PIXEL * config.depth_size ** 2}


def face_reply_bytes(config, head: bool = False, video: bool = False) -> int:
    """Upper estimate of one face's arrays in a reply (``head``: head geometry; ``video``: with its
    performance, a row per frame up to ``max_video_frames``)."""
    performance = _ANIM_BYTES_PER_FRAME * config.max_video_frames if video else 0
    return sum(_costs(config, head).values()) + _FIXED_BYTES_PER_FACE + performance


def check_video(config, head: bool) -> None:
    """What a video request needs before any work: head geometry, one face."""
    if not head:
        raise ProtocolError(ErrorCode.NO_MODEL if config.geometry != "face" else ErrorCode.BAD_REQUEST,
                            "a video makes a head, which needs geometry head and the head model installed "
                            "(`python -m inference_server model fetch`)")
    if config.face == "all":
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a video follows one face: choose face 'largest' or a number")


def bounded(kind: type, low: float, high: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind.__name__} in [{low:g}, {high:g}]") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"is {text}, outside [{low:g}, {high:g}]")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve`` flags for the ceilings (the pixel ceiling is ``--max-pixels``, an option of the schema)."""
    group = parser.add_argument_group("limits per request (a request may lower them, never raise them)")
    defaults = RequestLimits()
    for name in RequestLimits.CAPPED_OPTIONS:
        option = options.BY_NAME[name]
        group.add_argument(f"--max-{name.replace('_', '-')}", dest=f"limit_{name}", default=getattr(defaults, name),
                           type=bounded(int, option.minimum, option.maximum), metavar="INT",
                           help=f"largest {name} a request may ask for (default %(default)s)")
    group.add_argument("--max-reply-mb", type=bounded(float, 1, 4096), default=defaults.reply_bytes / MB,
                       metavar="MB", help="largest reply, estimated before the work starts (default %(default)g)")
    group.add_argument("--max-request-seconds", type=bounded(float, 0.1, 24 * 3600), metavar="S",
                       default=defaults.request_seconds,
                       help="a request running longer stops at its next stage (default %(default)g)")


def from_args(args: argparse.Namespace) -> RequestLimits:
    return RequestLimits(**{name: getattr(args, f"limit_{name}") for name in RequestLimits.CAPPED_OPTIONS},
                         reply_bytes=int(args.max_reply_mb * MB), request_seconds=args.max_request_seconds)
