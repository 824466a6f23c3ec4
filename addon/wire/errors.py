"""Error codes, the protocol error and the exit statuses of every command line: pure Python.

Importable without numpy or pyzmq, so a Python that lacks them (Debian's Blender before its
packages are installed) can still report a clean error with the documented exit status.
"""
from __future__ import annotations

from enum import IntEnum


class ErrorCode:
    """Machine-readable error codes carried in ``error.code``."""

    BAD_REQUEST = "bad_request"          # malformed header, frames or options
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    TOO_LARGE = "too_large"              # message, image or requested work over the server's limits
    BAD_IMAGE = "bad_image"              # bytes that do not decode to a usable image, or photos not of one person
    NO_FACE = "no_face"
    NO_MODEL = "no_model"                # a mode whose model files are not installed on the server
    BUSY = "busy"                        # server queue full
    CANCELLED = "cancelled"              # stopped on the client's request (or past its deadline)
    INTERNAL = "internal"
    WORKER_LOST = "worker_lost"          # the worker process running the request died; sending it again may work
    TIMEOUT = "timeout"                  # no reply in time; sent by a server whose worker hung past the deadline
    # A client-side condition, never sent by a server but reported the same way.
    UNREACHABLE = "unreachable"


class ProtocolError(Exception):
    """A message that violates the protocol, or an error reply. ``code`` is an ``ErrorCode``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


class Exit(IntEnum):
    """Exit statuses shared by ``python -m inference_server`` and ``scripts/batch.py``."""

    OK = 0            # everything asked for was done (or, in a batch, already done)
    FAILED = 1        # an internal error; in a batch: at least one photo failed (see the summary)
    USAGE = 2         # bad command line or option value
    BAD_INPUT = 3     # unreadable, corrupt or oversize image, or bad model/checkpoint file
    NO_FACE = 4       # no face found
    SERVER = 5        # server unreachable, timed out, busy, of another protocol version, or failed to start
    SETUP = 6         # something the command needs is not installed (numpy/pyzmq, a Python with torch, a model)
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


EXIT_FOR_ERROR = {
    ErrorCode.BAD_REQUEST: Exit.USAGE, ErrorCode.UNKNOWN_OP: Exit.USAGE,
    ErrorCode.BAD_IMAGE: Exit.BAD_INPUT, ErrorCode.TOO_LARGE: Exit.BAD_INPUT,
    ErrorCode.NO_FACE: Exit.NO_FACE, ErrorCode.NO_MODEL: Exit.SETUP,
    ErrorCode.TIMEOUT: Exit.SERVER, ErrorCode.UNREACHABLE: Exit.SERVER, ErrorCode.BUSY: Exit.SERVER,
    ErrorCode.UNSUPPORTED_VERSION: Exit.SERVER, ErrorCode.CANCELLED: Exit.INTERRUPTED,
    ErrorCode.INTERNAL: Exit.FAILED, ErrorCode.WORKER_LOST: Exit.FAILED,
}


def exit_for(code: str) -> Exit:
    """The exit status for an error code (``Exit.FAILED`` for anything unexpected)."""
    return EXIT_FOR_ERROR.get(code, Exit.FAILED)


EXIT_HELP = ("exit status: 0 done; 1 internal error (batch: some photos failed, see the summary); 2 bad usage or "
             "option; 3 unreadable/oversize image or bad model file; 4 no face; 5 server unreachable, busy, timed "
             "out, other protocol version or failed to start; 6 missing dependency or model; 130 interrupted")
