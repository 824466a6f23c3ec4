"""Typed settings of the server: per-request options (derived from the one option schema) and sockets."""
from __future__ import annotations

from dataclasses import dataclass

from addon.wire import options
from addon.wire.protocol import DEFAULT_MAX_MESSAGE_BYTES, ErrorCode, ProtocolError

from .limits import MB, RequestLimits
from .security import ServerKeys

ReconstructionConfig = options.config_class(
    "ReconstructionConfig", options.on_side(options.SERVER, options.LIMIT),
    "Per-request options (fields and defaults from ``addon.wire.options``); ``with_params`` applies a "
    "request's validated options.", module=__name__)


def request_geometry(config, head_installed: bool) -> str:
    """The geometry a request gets: ``auto`` is the head when the model is installed, unless the
    request asks for network or cues depth, which refines face mode's surface (the head has its own
    photometric refinement). Decided alike by the pipeline and by the I/O thread's cost estimate."""
    if config.depth_backend in ("network", "cues"):
        if config.geometry == "head":
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"depth_backend '{config.depth_backend}' refines face mode's surface; "
                                                       "for the head use refine 'light' or 'full', or ask for "
                                                       "geometry 'face'")
        return "face"
    if config.geometry == "face" or (config.geometry == "auto" and not head_installed):
        return "face"
    if not head_installed:
        from .head.store import missing_model_message

        raise ProtocolError(ErrorCode.NO_MODEL, missing_model_message())
    return "head"


@dataclass(frozen=True)
class ServerConfig:
    """Socket-side settings and the operator's limits; the device belongs to the pipeline, which the
    server receives ready-made."""

    bind: str = "tcp://127.0.0.1:5555"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue: int = 32                          # reconstruct requests waiting beyond this get a "busy" reply
    workers: int = 1                             # model-owning workers: 1 thread, or this many processes
    worker_grace_seconds: float = 10.0           # past a request's deadline or time limit: its worker is hung
    limits: RequestLimits = RequestLimits()      # ceilings per request
    max_unread_bytes: int = 128 * MB             # replies held for one connection that has not read them
    max_connections: int = 256                   # open client connections (heavy peers' idle ones make room)
    max_connections_per_peer: int = 64           # open connections from one IP address
    keys: ServerKeys | None = None               # CURVE: required for a bind address other machines can reach
    insecure: bool = False                       # serve a non-loopback address without keys anyway
