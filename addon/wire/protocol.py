"""FaceForge wire protocol: the one definition shared by server, add-on and scripts.

A message is a ZeroMQ multipart message:

    frame 0      JSON header (UTF-8), at most ``MAX_HEADER_BYTES``
    frame 1..n   raw binary payloads, described by ``header["frames"]``

Header keys (request):  ``protocol``, ``version``, ``id``, ``op``, ``params``, ``frames`` and optionally
                        ``timeout_ms`` (the server drops or stops the request once it is that old).
Header keys (reply):    ``protocol``, ``version``, ``id``, ``ok``, ``result`` or ``error``, ``frames``.
Progress (server -> client, zero or more before a ``reconstruct`` reply, same ``id``): ``progress`` =
``{"stage", "text", "fraction", "face", "faces"}`` and no ``ok``.

Ops: ``info``; ``reconstruct`` (frame ``image``, options in ``params``, see ``options.py``);
``cancel`` (``params.id`` = the request to stop; the server stops it at its next stage boundary and
answers it with ``cancelled``).

Each entry of ``frames`` is ``{"name": str, "kind": "array"|"bytes", "dtype": str, "shape": [..]}``
(``dtype``/``shape`` only for arrays).  Arrays travel as their raw C-ordered bytes, so large
payloads are sent and received without copies (``copy=False`` on both ends).

Only numpy and pyzmq are imported here, so the module loads inside Blender's Python as well as
in the torch server process.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import zmq

from .errors import ErrorCode, ProtocolError  # noqa: F401  (re-exported: one import for protocol users)

PROTOCOL = "faceforge"
VERSION = 2  # 2: progress messages, cancel op, request timeouts

MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_FRAMES = 64
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ZERO_COPY_THRESHOLD = 64 * 1024  # below this, copying is cheaper than zero-copy bookkeeping

OPS = ("info", "reconstruct", "cancel")

# Dtypes allowed on the wire: fixed-size numeric only, never object arrays.
_ALLOWED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64", "bool"}


@dataclass
class Message:
    """A decoded message: header fields plus named payloads (numpy arrays or bytes-like)."""

    header: dict
    payloads: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.header.get("id", ""))

    @property
    def op(self) -> str:
        return str(self.header.get("op", ""))

    @property
    def params(self) -> dict:
        return self.header.get("params") or {}

    @property
    def progress(self) -> dict | None:
        """The progress report of a progress message, None for requests and replies."""
        value = self.header.get("progress")
        return value if isinstance(value, dict) else None

    @property
    def ok(self) -> bool:
        return bool(self.header.get("ok"))

    @property
    def result(self) -> dict:
        return self.header.get("result") or {}

    @property
    def error(self) -> ProtocolError | None:
        err = self.header.get("error")
        if self.header.get("ok", True) or not isinstance(err, dict):
            return None
        return ProtocolError(str(err.get("code", ErrorCode.INTERNAL)), str(err.get("message", "unknown error")))

    def raise_for_error(self) -> "Message":
        err = self.error
        if err is not None:
            raise err
        return self


def _describe(name: str, value: Any) -> tuple[dict, Any]:
    """Frame descriptor and buffer for one payload."""
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _ALLOWED_DTYPES:
            raise ValueError(f"payload {name!r}: dtype {value.dtype} cannot travel on the wire")
        arr = np.ascontiguousarray(value)
        return {"name": name, "kind": "array", "dtype": arr.dtype.name, "shape": list(arr.shape)}, arr
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"name": name, "kind": "bytes"}, value
    raise TypeError(f"payload {name!r}: expected numpy array or bytes, got {type(value).__name__}")


def _encode(header: dict, payloads: Mapping[str, Any] | None) -> list:
    descriptors, buffers = [], []
    for name, value in (payloads or {}).items():
        desc, buf = _describe(name, value)
        descriptors.append(desc)
        buffers.append(buf)
    header = dict(header, protocol=PROTOCOL, version=header.get("version", VERSION), frames=descriptors)
    return [json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8"), *buffers]


def encode_request(op: str, request_id: str, params: Mapping | None = None,
                   payloads: Mapping[str, Any] | None = None, version: int = VERSION,
                   timeout: float | None = None) -> list:
    """Frames of a request. ``version`` is only overridden by tests of version checks."""
    header = {"version": version, "id": request_id, "op": op, "params": dict(params or {})}
    if timeout is not None:
        header["timeout_ms"] = max(1, int(timeout * 1000))
    return _encode(header, payloads)


def encode_progress(request_id: str, stage: str, text: str, fraction: float, face: int = 0, faces: int = 0) -> list:
    """A progress report for ``request_id``: ``fraction`` of the whole request done, 0..1."""
    return _encode({"id": request_id, "progress": {"stage": stage, "text": text, "fraction": round(fraction, 4),
                                                   "face": face, "faces": faces}}, None)


def encode_reply(request_id: str, result: Mapping | None = None, payloads: Mapping[str, Any] | None = None) -> list:
    return _encode({"id": request_id, "ok": True, "result": dict(result or {})}, payloads)


def encode_error(request_id: str, code: str, message: str) -> list:
    return _encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}}, None)


def send_frames(socket, frames: Sequence, prefix: Sequence[bytes] = ()) -> None:
    """Send ``prefix`` (routing ids) + frames; large buffers go zero-copy."""
    parts = list(prefix) + list(frames)
    last = len(parts) - 1
    for i, part in enumerate(parts):
        big = isinstance(part, np.ndarray) and part.nbytes >= ZERO_COPY_THRESHOLD
        socket.send(part, flags=(0 if i == last else zmq.SNDMORE), copy=not big)


def frame_bytes(frame) -> memoryview:
    """A read-only view of a received frame (``zmq.Frame`` or bytes) without copying."""
    buf = getattr(frame, "buffer", None)
    return memoryview(buf if buf is not None else frame)


def decode(frames: Sequence, *, max_frames: int = DEFAULT_MAX_FRAMES,
           max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, expect_version: int | None = VERSION) -> Message:
    """Validate and decode frames (header first). Raises ``ProtocolError`` with a precise reason.

    Arrays are zero-copy views on the received frames and therefore read-only.
    """
    if not frames:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty message")
    if len(frames) > max_frames:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message has {len(frames)} frames; the limit is {max_frames}")
    views = [frame_bytes(f) for f in frames]
    total = sum(v.nbytes for v in views)
    if total > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message is {total} bytes; the limit is {max_bytes}")
    header = _parse_header(views[0])
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not a {PROTOCOL} message (protocol={header.get('protocol')!r})")
    version = header.get("version")
    if expect_version is not None and version != expect_version:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"protocol version {version!r} is not supported; this side speaks version {expect_version}")
    descriptors = header.get("frames", [])
    if not isinstance(descriptors, list) or len(descriptors) != len(views) - 1:
        n = len(descriptors) if isinstance(descriptors, list) else "?"
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header describes {n} payload frames but {len(views) - 1} arrived")
    payloads = {}
    for desc, view in zip(descriptors, views[1:]):
        name, value = _decode_payload(desc, view)
        payloads[name] = value
    return Message(header=header, payloads=payloads)


def _parse_header(view: memoryview) -> dict:
    if view.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header frame is {view.nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(view).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header frame is not UTF-8 JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header frame is not a JSON object")
    return header


def _decode_payload(desc: Any, view: memoryview) -> tuple[str, Any]:
    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad frame descriptor {desc!r:.80}")
    name, kind = desc["name"], desc.get("kind")
    if kind == "bytes":
        return name, view
    if kind != "array":
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {name!r}: unknown kind {kind!r}")
    dtype, shape = desc.get("dtype"), desc.get("shape")
    if dtype not in _ALLOWED_DTYPES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {name!r}: dtype {dtype!r} not allowed")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {name!r}: bad shape {shape!r}")
    dt = np.dtype(dtype)
    expected = dt.itemsize * int(np.prod(shape, dtype=np.int64))
    if expected != view.nbytes:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"frame {name!r}: {view.nbytes} bytes do not match {dtype}{tuple(shape)} ({expected} bytes)")
    return name, np.frombuffer(view, dtype=dt).reshape(shape)


def face_payloads(index: int, arrays: Mapping[str, np.ndarray]) -> dict:
    """Name arrays of face ``index`` as they travel: ``"face<index>/<name>"``."""
    return {f"face{index}/{name}": value for name, value in arrays.items()}


def split_face_payloads(payloads: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Inverse of ``face_payloads``: ``{index: {name: array}}``."""
    faces: dict[int, dict[str, Any]] = {}
    for key, value in payloads.items():
        head, sep, name = key.partition("/")
        if sep and head.startswith("face") and head[4:].isdigit():
            faces.setdefault(int(head[4:]), {})[name] = value
    return faces


# Arrays every reconstructed face carries (name -> (dtype, shape description)). Documentation and tests use it.
FACE_ARRAYS = {
    "vertices": ("float32", "(V, 3) metres, Blender axes: X right, Z up, face looks toward -Y"),
    "faces": ("int32", "(F, 3) triangle vertex indices"),
    "uvs": ("float32", "(V, 2) per-vertex texture coordinates in [0, 1], origin bottom-left"),
    "texture": ("uint8", "(H, W, 3) RGB, row 0 at the top"),
    "detail": ("float32", "(H, W) signed high-pass of the texture luminance, aligned with texture"),
    "depth": ("float32", "(R, R) height in metres in front of the deepest face point (larger = nearer), 0 outside mask"),
    "mask": ("bool", "(R, R) valid depth pixels"),
    "landmarks": ("float32", "(N, 3) FaceMesh landmarks in mesh space (metres)"),
    "landmarks_image": ("float32", "(N, 2) FaceMesh landmarks in source-image pixels"),
}


# Head mode (``meta["geometry"] == "head"``): the fitted morphable head, vertex i the same anatomical point on
# every head. Axes and units as FACE_ARRAYS; the pose is in ``meta["pose"]["matrix"]`` (4x4, object -> camera
# view in Blender axes), not in the vertices.
HEAD_ARRAYS = {
    "vertices": ("float32", "(V, 3) canonical head (identity, neutral expression), object space, metres"),
    "polygon_sizes": ("uint8", "(P,) corners per polygon: 3 or 4 (quads where the model has quads)"),
    "polygon_vertices": ("int32", "(sum(polygon_sizes),) corner vertex indices, polygon after polygon"),
    "corner_uvs": ("float32", "(sum(polygon_sizes), 2) per-corner atlas UVs in [0, 1], origin bottom-left"),
    "polygon_material": ("uint8", "(P,) index into meta['materials']"),
    "expression_deltas": ("float32", "(E, V, 3) this identity's expression shapes as vertex deltas"),
    "expression_weights": ("float32", "(E,) fitted weights in [0, 1]; names in meta['expressions']"),
    "texture": ("uint8", "(S, S, 3) RGB atlas texture, row 0 at the top"),
    "detail": ("float32", "(S, S) signed detail map aligned with texture"),
    "depth": ("float32", "(R, R) the fitted head rendered in the photo's crop: height in metres, 0 outside mask"),
    "mask": ("bool", "(R, R) valid depth pixels"),
    "landmarks": ("float32", "(478, 3) FaceMesh landmarks' places on the canonical head, object space"),
    "landmarks_image": ("float32", "(478, 2) FaceMesh landmarks in source-image pixels"),
}


def arrays_for(meta: Mapping) -> dict:
    """The array table a reconstructed face's reply follows, by its ``geometry``."""
    return HEAD_ARRAYS if meta.get("geometry") == "head" else FACE_ARRAYS


def as_jsonable(value: Any) -> Any:
    """Numpy scalars/arrays inside results -> plain JSON types."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): as_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_jsonable(v) for v in value]
    return value
