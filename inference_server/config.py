"""Typed settings of the server: per-request options (derived from the one option schema) and sockets."""
from __future__ import annotations

from dataclasses import dataclass

from addon.wire import options
from addon.wire.protocol import DEFAULT_MAX_MESSAGE_BYTES

from .limits import RequestLimits
from .security import ServerKeys

ReconstructionConfig = options.config_class(
    "ReconstructionConfig", options.on_side(options.SERVER, options.LIMIT),
    "Per-request options (fields and defaults from ``addon.wire.options``); ``with_params`` applies a "
    "request's validated options.", module=__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Socket-side settings and the operator's limits; the device belongs to the pipeline, which the
    server receives ready-made."""

    bind: str = "tcp://127.0.0.1:5555"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_queue: int = 32                          # reconstruct requests waiting beyond this get a "busy" reply
    workers: int = 1                             # model-owning workers: 1 thread, or this many processes
    limits: RequestLimits = RequestLimits()      # ceilings per request
    keys: ServerKeys | None = None               # CURVE: required for a bind address other machines can reach
    insecure: bool = False                       # serve a non-loopback address without keys anyway
