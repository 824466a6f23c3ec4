"""FaceForge wire protocol: the one definition shared by server, add-on and scripts.

A message is a ZeroMQ multipart message:

    frame 0      JSON header (UTF-8), at most ``MAX_HEADER_BYTES``
    frame 1..n   raw binary payloads, described by ``header["frames"]``

Header keys (request):  ``protocol``, ``version``, ``id``, ``op``, ``params``, ``frames`` and optionally
                        ``timeout_ms`` (the server drops or stops the request once it is that old).
Header keys (reply):    ``protocol``, ``version``, ``id``, ``ok``, ``result`` or ``error``, ``frames``.
Progress (server -> client, zero or more before a ``reconstruct`` reply, same ``id``): ``progress`` =
``{"stage", "text", "fraction", "face", "faces"}`` and no ``ok``.

Ops: ``info``; ``reconstruct`` (frame ``image``, options in ``params``, see ``options.py``; several photos
of one person as ``image``, ``image_2``, ``image_3`` ... up to the ``max_photos`` limit: one head fitted
to all of them, ``photo_frames``; or one video file as ``video``: one head and its performance, the
``anim_*`` arrays of ``HEAD_VIDEO_ARRAYS``, ``video_frame``);
``cancel`` (``params.id`` = the request to stop; the server stops it at its next stage boundary and
answers it with ``cancelled``); ``head_model`` (``params.fingerprint``): the arrays every head of
the server's head model shares (``HEAD_MODEL_ARRAYS``). A head face's meta names them by
``model_fingerprint`` instead of carrying them; clients fetch them once and cache them by that
fingerprint (``client.Client.model_arrays``).

Each entry of ``frames`` is ``{"name": str, "kind": "array"|"bytes", "dtype": str, "shape": [..]}``
(``dtype``/``shape`` only for arrays).  Arrays travel as their raw C-ordered bytes, so large
payloads are sent and received without copies (``copy=False`` on both ends).

Decoding treats every byte as hostile: the header's JSON nesting depth is bounded before parsing,
header fields have exact types (``version: true`` is not 1), ids are short strings, and frame
shapes are checked (non-bool integers, at most ``MAX_NDIM`` dimensions, byte size computed in
Python integers) before numpy sees them. Anything wrong is a ``ProtocolError``, nothing else. An
error reply to a message whose id cannot be read (``read_id``) carries the id ''.

Only numpy and pyzmq are imported here, so the module loads inside Blender's Python as well as
in the torch server process.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import zmq

from .errors import ErrorCode, ProtocolError  # noqa: F401  (re-exported: one import for protocol users)

PROTOCOL = "faceforge"
VERSION = 4  # 2: progress messages, cancel op, request timeouts; 3: head_model op, per-model arrays sent once;
#              4: several photos of one person in one reconstruct request

MAX_HEADER_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16       # a real header nests 4 deep (header > frames > descriptor > shape)
MAX_ID_CHARS = 128
MAX_NDIM = 32             # numpy's own limit is 64; no payload needs more than 3
MAX_TIMEOUT_MS = 24 * 3600 * 1000
DEFAULT_MAX_FRAMES = 64
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ZERO_COPY_THRESHOLD = 64 * 1024  # below this, copying is cheaper than zero-copy bookkeeping

OPS = ("info", "reconstruct", "cancel", "head_model")

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
        """The request's options; ``check_request`` guarantees a dict for requests."""
        value = self.header.get("params")
        return value if isinstance(value, dict) else {}

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


def send_frames(socket, frames: Sequence, prefix: Sequence[bytes] = (), flags: int = 0) -> None:
    """Send ``prefix`` (routing ids) + frames; large buffers go zero-copy. ``flags`` (e.g. ``zmq.NOBLOCK``)
    apply to every part."""
    parts = list(prefix) + list(frames)
    last = len(parts) - 1
    for i, part in enumerate(parts):
        big = isinstance(part, np.ndarray) and part.nbytes >= ZERO_COPY_THRESHOLD
        socket.send(part, flags=flags | (0 if i == last else zmq.SNDMORE), copy=not big)


def frame_bytes(frame) -> memoryview:
    """A read-only view of a received frame (``zmq.Frame`` or bytes) without copying."""
    buf = getattr(frame, "buffer", None)
    return memoryview(buf if buf is not None else frame)


def decode(frames: Sequence, *, max_frames: int = DEFAULT_MAX_FRAMES,
           max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, expect_version: int | None = VERSION) -> Message:
    """Validate and decode frames (header first). Raises ``ProtocolError`` with a precise reason, never
    anything else, whatever the frames hold.

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
    header = parse_header(views[0])
    if header.get("protocol") != PROTOCOL:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"not a {PROTOCOL} message (protocol={clip(header.get('protocol'))})")
    version = header.get("version")
    if expect_version is not None and (type(version) is not int or version != expect_version):
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"protocol version {clip(version)} is not supported; this side speaks version {expect_version}")
    if header_id(header) is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'id' must be a string of at most {MAX_ID_CHARS} characters")
    descriptors = header.get("frames", [])
    if not isinstance(descriptors, list) or len(descriptors) != len(views) - 1:
        n = len(descriptors) if isinstance(descriptors, list) else "?"
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header describes {n} payload frames but {len(views) - 1} arrived")
    payloads = {}
    for desc, view in zip(descriptors, views[1:]):
        name, value = _decode_payload(desc, view)
        payloads[name] = value
    return Message(header=header, payloads=payloads)


def check_request(message: Message) -> None:
    """Field types of a request's header, beyond what ``decode`` checks for every message."""
    header = message.header
    op = header.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {clip(op)}; known: {', '.join(OPS)}")
    if not isinstance(header.get("params", {}), dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'params' must be a JSON object of options")
    timeout_ms = header.get("timeout_ms")
    if timeout_ms is not None and (type(timeout_ms) is not int or not 1 <= timeout_ms <= MAX_TIMEOUT_MS):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'timeout_ms' must be an integer in [1, {MAX_TIMEOUT_MS}]")


def header_id(header: dict) -> str | None:
    """The message id ('' when absent), or None when it is not a short string."""
    value = header.get("id", "")
    return value if isinstance(value, str) and len(value) <= MAX_ID_CHARS else None


def read_id(frames: Sequence) -> str:
    """The id of a message that failed to decode, if its header yields one; '' otherwise. Never raises."""
    try:
        return header_id(parse_header(frame_bytes(frames[0]))) or ""
    except Exception:  # noqa: BLE001 - this runs on the error path of arbitrary bytes
        return ""


def clip(value: Any, limit: int = 60) -> str:
    """A client-supplied value for a message or a log line: escaped (no newlines or control
    characters can forge lines) and truncated."""
    text = repr(value[:limit + 1] if isinstance(value, (str, bytes)) else value)
    return text if len(text) <= limit else text[:limit] + "..."


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPENERS, _CLOSERS = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def json_depth(raw: bytes) -> int:
    """Deepest bracket nesting outside string literals, without recursion (the json module recurses)."""
    structure = np.frombuffer(_JSON_STRING.sub(b"", raw), np.uint8)
    steps = np.isin(structure, _OPENERS).astype(np.int32) - np.isin(structure, _CLOSERS)
    return int(np.cumsum(steps).max(initial=0))


def parse_header(view: memoryview) -> dict:
    if view.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header frame is {view.nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    raw = bytes(view)
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"header frame is not UTF-8 JSON ({str(exc)[:100]})") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "header frame is not a JSON object")
    return header


def _refuse_constant(name: str) -> None:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON; Python's parser accepts them unless told."""
    raise ValueError(f"{name} is not valid JSON")


def _decode_payload(desc: Any, view: memoryview) -> tuple[str, Any]:
    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str) or len(desc["name"]) > MAX_ID_CHARS:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad frame descriptor {clip(desc)}")
    name, kind = desc["name"], desc.get("kind")
    if kind == "bytes":
        return name, view
    if kind != "array":
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {clip(name)}: unknown kind {clip(kind)}")
    dtype, shape = desc.get("dtype"), desc.get("shape")
    if not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {clip(name)}: dtype {clip(dtype)} not allowed")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(s) is int and 0 <= s < 2**31 for s in shape)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"frame {clip(name)}: bad shape {clip(shape)} (at most {MAX_NDIM} "
                                                   f"non-negative integers)")
    itemsize = np.dtype(dtype).itemsize
    # Python integers: no overflow. A zero-length axis must not hide an absurd size from numpy either.
    expected = itemsize * math.prod(shape)
    if expected != view.nbytes or itemsize * math.prod(max(s, 1) for s in shape) > 2**48:
        raise ProtocolError(ErrorCode.BAD_REQUEST,
                            f"frame {clip(name)}: {view.nbytes} bytes do not match {dtype}{tuple(shape)}")
    return name, np.frombuffer(view, dtype=dtype).reshape(shape)


def photo_payloads(photos: Sequence) -> dict:
    """A reconstruct request's photo frames: ``image``, then ``image_2``, ``image_3`` ... (one person)."""
    return {("image" if n == 1 else f"image_{n}"): photo for n, photo in enumerate(photos, 1)}


def photo_frames(payloads: Mapping[str, Any]) -> list:
    """The photos of a reconstruct request in order (``photo_payloads``' inverse); ``ProtocolError`` when
    the first is missing, one is not raw bytes, or the numbering has a gap."""
    photos = []
    while True:
        name = "image" if not photos else f"image_{len(photos) + 1}"
        value = payloads.get(name)
        if value is None:
            break
        if not isinstance(value, memoryview):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"reconstruct's {name!r} frame must be of kind 'bytes' holding "
                                                       "the photo file (JPEG, PNG, WebP, BMP or TIFF)")
        photos.append(value)
    if not photos:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "reconstruct needs an 'image' frame of kind 'bytes' holding "
                                                   "the photo file (JPEG, PNG, WebP, BMP or TIFF)")
    strays = sorted(name for name in payloads if name.startswith("image_") and name not in photo_payloads(photos))
    if strays:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"photo frames must be numbered image, image_2, image_3 ... without "
                                                   f"gaps; got {clip(', '.join(strays))} after {len(photos)}")
    return photos


def video_frame(payloads: Mapping[str, Any]) -> memoryview | None:
    """A reconstruct request's ``video`` frame (a video file's bytes: one head and its per-frame performance),
    or None when it carries photos; ``ProtocolError`` when it is not raw bytes or comes with photos."""
    value = payloads.get("video")
    if value is None:
        return None
    if not isinstance(value, memoryview):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "reconstruct's 'video' frame must be of kind 'bytes' holding the "
                                                   "video file (MP4, MOV, MKV, WebM or AVI)")
    if any(name == "image" or name.startswith("image_") for name in payloads):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a reconstruct request carries photos or one video, not both")
    return value


def request_media(payloads: Mapping[str, Any]) -> tuple[str, list]:
    """("video", [the video]) or ("photos", [photo, ...]) of a reconstruct request, checked."""
    video = video_frame(payloads)
    return ("video", [video]) if video is not None else ("photos", photo_frames(payloads))


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
# view in Blender axes), not in the vertices. A reply carries HEAD_FACE_ARRAYS per face; HEAD_MODEL_ARRAYS are
# the same for every head of one model and come once from the ``head_model`` op (``meta["model_fingerprint"]``).
HEAD_MODEL_ARRAYS = {
    "polygon_sizes": ("uint8", "(P,) corners per polygon: 3 or 4 (quads where the model has quads)"),
    "polygon_vertices": ("int32", "(sum(polygon_sizes),) corner vertex indices, polygon after polygon"),
    "corner_uvs": ("float32", "(sum(polygon_sizes), 2) per-corner atlas UVs in [0, 1], origin bottom-left"),
    "polygon_material": ("uint8", "(P,) index into meta['materials']"),
    "expression_deltas": ("float32", "(E, V, 3) the model's expression shapes as vertex deltas"),
}
HEAD_FACE_ARRAYS = {
    "vertices": ("float32", "(V, 3) canonical head (identity, neutral expression), object space, metres"),
    "expression_weights": ("float32", "(E,) fitted weights in [0, 1]; names in meta['expressions']"),
    "texture": ("uint8", "(S, S, 3) RGB atlas texture, row 0 at the top"),
    "detail": ("float16", "(S, S) signed detail map aligned with texture (unit in meta['detail_unit'])"),
    "depth": ("float32", "(R, R) the fitted head rendered in the photo's crop: height in metres, 0 outside mask"),
    "mask": ("bool", "(R, R) valid depth pixels"),
    "landmarks": ("float32", "(478, 3) FaceMesh landmarks' places on the canonical head, object space"),
    "landmarks_image": ("float32", "(478, 2) FaceMesh landmarks in source-image pixels"),
}
# With refinement (``refine`` light or full) a head also carries ``vertex_irradiance`` (float16, (V, 3)
# linear RGB irradiance of the fitted lighting at each vertex: albedo x irradiance = the photo's look);
# with ``refine full``, ``vertex_displacement`` (float32, (V,) metres along the normals: the shape from
# shading, already added to ``vertices``, so every export carries it).
# A head made from a video (``meta["video"]`` present) also carries its performance, one row per frame read:
HEAD_VIDEO_ARRAYS = {
    "anim_frame": ("int32", "(T,) the video's frame number of each row"),
    "anim_time": ("float64", "(T,) seconds from the video's start"),
    "anim_tracked": ("uint8", "(T,) 1 where the face was followed (or a short loss bridged); 0 rows hold no pose"),
    "anim_weights": ("float32", "(T, E) expression weights in [0, 1]; names in meta['expressions']"),
    "anim_rotation": ("float32", "(T, 3, 3) camera-from-model rotation, OpenCV camera axes (x right, y down, z ahead)"),
    "anim_translation": ("float32", "(T, 3) metres, the same camera axes"),
}
HEAD_ARRAYS = HEAD_MODEL_ARRAYS | HEAD_FACE_ARRAYS  # what a head face holds once its model arrays are joined


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
