"""Client side of the FaceForge protocol: a DEALER socket with request ids and deadlines.

A DEALER (not REQ) socket never wedges after a timeout: late replies simply arrive with an id
nobody waits for any more and are dropped. Several requests may be in flight on one client
(``send`` then ``receive``), which is how the batch script keeps the server busy.

One ``Client`` belongs to one thread (ZeroMQ sockets are not thread-safe). Blender's UI runs a
client on a worker thread and hands results back to the main thread as futures.

For a remote server, ``keys`` (``security.ClientKeys``) makes the socket a CURVE client: the server
is authenticated by its public key and the traffic is encrypted.

A head reply names its model's shared arrays (topology, UVs, expression deltas: 17 MB) by fingerprint
instead of carrying them; ``Client.model_arrays`` fetches them once per process (``head_model`` op)
and ``Client.reconstruction`` joins them into each head, so callers see whole heads.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import zmq

from . import protocol
from .protocol import ErrorCode, Message, ProtocolError
from .security import ClientKeys

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
CONNECT_TIMEOUT = 3.0  # seconds to wait for the TCP connection before calling the server unreachable
_POLL_SLICE_MS = 50    # granularity at which a blocking wait notices cancellation
_CANCEL_LINGER_MS = 200  # a closing client's cancel messages get this long to leave
_MODEL_ARRAYS: dict[str, dict] = {}  # fingerprint -> read-only HEAD_MODEL_ARRAYS, shared by every client
_MODEL_ARRAYS_LOCK = threading.Lock()


class Client:
    """Blocking client with a deadline on every call."""

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = 60.0,
                 context: zmq.Context | None = None, max_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 keys: ClientKeys | None = None):
        self.address = address
        self.keys = keys
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Queue messages only on completed connections, so "server not running" is detected at send time.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        if keys is not None:
            keys.apply(self._socket)
        self._socket.connect(address)
        self._ids = itertools.count(1)
        self._cancels_sent = False
        self._prefix = f"{os.getpid():x}-{id(self) & 0xFFFFFF:x}"
        self._outstanding: set[str] = set()      # sent, not yet answered, not abandoned
        self._early: dict[str, Message] = {}     # answered while ``call`` waited for another id
        self._on_progress: dict[str, Callable[[dict], None]] = {}

    def close(self) -> None:
        """Close the socket, first asking the server to stop whatever this client still waits for."""
        for request_id in list(self._outstanding):
            self.abandon(request_id)
        self._socket.close(linger=_CANCEL_LINGER_MS if self._cancels_sent else 0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, op: str, params: Mapping | None = None, payloads: Mapping[str, Any] | None = None,
             *, version: int = protocol.VERSION, timeout: float | None = None,
             on_progress: Callable[[dict], None] | None = None) -> str:
        """Queue one request; returns its id. Raises ``ProtocolError(UNREACHABLE)`` if no server answers the connection.

        ``timeout`` travels with the request: the server drops or stops it once it is that old.
        ``on_progress`` is called (on this client's thread, while it waits) with each progress report."""
        request_id = f"{self._prefix}-{next(self._ids)}"
        frames = protocol.encode_request(op, request_id, params, payloads, version=version, timeout=timeout)
        if not self._socket.poll(int(CONNECT_TIMEOUT * 1000), zmq.POLLOUT):
            why = "is it running, and does it accept this client's key?" if self.keys else "is it running?"
            raise ProtocolError(ErrorCode.UNREACHABLE, f"cannot connect to the FaceForge server at {self.address}: {why}")
        protocol.send_frames(self._socket, frames)
        self._outstanding.add(request_id)
        if on_progress is not None:
            self._on_progress[request_id] = on_progress
        return request_id

    def abandon(self, request_id: str) -> None:
        """Forget a request (its reply, if it ever comes, is dropped) and ask the server to stop it."""
        if request_id in self._outstanding and self._socket.poll(0, zmq.POLLOUT):
            cancel = protocol.encode_request("cancel", f"{request_id}-cancel", {"id": request_id})
            protocol.send_frames(self._socket, cancel)  # its reply is dropped like any unknown id
            self._cancels_sent = True
        self._outstanding.discard(request_id)
        self._on_progress.pop(request_id, None)
        self._early.pop(request_id, None)

    def receive(self, timeout: float | None = None, cancel: threading.Event | None = None) -> Message:
        """Next reply to an outstanding request of this client (replies to abandoned ones are dropped);
        a reply stashed by ``call`` comes first."""
        if self._early:
            return self._early.pop(next(iter(self._early)))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if cancel is not None and cancel.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(ErrorCode.TIMEOUT, f"no reply from {self.address} in time: the server may be busy or gone")
            if self._socket.poll(min(_POLL_SLICE_MS, max(1, int(remaining * 1000))), zmq.POLLIN):
                reply = protocol.decode(self._socket.recv_multipart(copy=False), max_bytes=self.max_bytes)
                if reply.progress is not None:
                    callback = self._on_progress.get(reply.id)
                    if callback is not None and reply.id in self._outstanding:
                        callback(reply.progress)
                    continue
                if reply.id in self._outstanding:
                    self._outstanding.discard(reply.id)
                    self._on_progress.pop(reply.id, None)
                    return reply
                if reply.id == "" and not reply.ok:
                    return reply  # the server could not read a request's id: report, don't drop

    def call(self, op: str, params: Mapping | None = None, payloads: Mapping[str, Any] | None = None,
             *, timeout: float | None = None, cancel: threading.Event | None = None,
             on_progress: Callable[[dict], None] | None = None) -> Message:
        """Send one request and wait for its own reply. Error replies raise ``ProtocolError``."""
        timeout = self.timeout if timeout is None else timeout
        request_id = self.send(op, params, payloads, timeout=timeout, on_progress=on_progress)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if request_id in self._early:
                    return self._early.pop(request_id).raise_for_error()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProtocolError(ErrorCode.TIMEOUT, f"no reply from {self.address} within {timeout:g} s")
                reply = self.receive(remaining, cancel)
                if reply.id == request_id or reply.id == "":
                    # An id-less error is the server's answer to a request it could not even parse: ours.
                    return reply.raise_for_error()
                self._early[reply.id] = reply
        except ProtocolError as err:
            if err.code in (ErrorCode.TIMEOUT, ErrorCode.CANCELLED):
                self.abandon(request_id)
            raise

    def info(self, timeout: float | None = None) -> dict:
        return self.call("info", timeout=timeout).result

    def reconstruct(self, image: bytes | Sequence[bytes], options: Mapping | None = None, *,
                    timeout: float | None = None, cancel: threading.Event | None = None,
                    on_progress: Callable[[dict], None] | None = None) -> "Reconstruction":
        """One photo's faces; or, given several photos of one person (head mode), one head fitted to all."""
        photos = [image] if isinstance(image, (bytes, bytearray, memoryview)) else list(image)
        reply = self.call("reconstruct", dict(options or {}), protocol.photo_payloads(photos), timeout=timeout,
                          cancel=cancel, on_progress=on_progress)
        return self.reconstruction(reply)

    def reconstruct_video(self, video: bytes, options: Mapping | None = None, *, timeout: float | None = None,
                          cancel: threading.Event | None = None,
                          on_progress: Callable[[dict], None] | None = None) -> "Reconstruction":
        """A video file of one person (head mode): one head, with its performance as the ``anim_*`` arrays
        (``protocol.HEAD_VIDEO_ARRAYS``); ``video_frames`` in ``options`` picks the frames."""
        reply = self.call("reconstruct", dict(options or {}), {"video": video}, timeout=timeout, cancel=cancel,
                          on_progress=on_progress)
        return self.reconstruction(reply)

    def reconstruction(self, reply: Message) -> "Reconstruction":
        """A ``reconstruct`` reply parsed, its heads joined with their model's shared arrays."""
        return Reconstruction.from_message(reply, self.model_arrays)

    def model_arrays(self, fingerprint: str) -> dict:
        """The arrays every head of model ``fingerprint`` shares: from this process's cache, else asked of
        the server once (other replies that arrive meanwhile wait for ``receive`` as usual)."""
        with _MODEL_ARRAYS_LOCK:
            cached = _MODEL_ARRAYS.get(fingerprint)
        if cached is not None:
            return cached
        reply = self.call("head_model", {"fingerprint": fingerprint})
        missing = [name for name in protocol.HEAD_MODEL_ARRAYS if name not in reply.payloads]
        if reply.result.get("fingerprint") != fingerprint or missing:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"the server's head_model reply is not model {fingerprint} "
                                                       f"(missing {missing})")
        arrays = {}
        for name in protocol.HEAD_MODEL_ARRAYS:
            array = np.array(reply.payloads[name])  # owned: the reply's frames go away
            array.flags.writeable = False            # shared by every head of the model
            arrays[name] = array
        with _MODEL_ARRAYS_LOCK:
            return _MODEL_ARRAYS.setdefault(fingerprint, arrays)


@dataclass
class FaceData:
    """One reconstructed face as it arrives: arrays plus metadata (box, score, timings...)."""

    index: int
    meta: dict
    arrays: dict = field(default_factory=dict)  # name -> np.ndarray, see protocol.FACE_ARRAYS


@dataclass
class Reconstruction:
    """A parsed ``reconstruct`` reply."""

    faces: list
    meta: dict

    @classmethod
    def from_message(cls, message: Message,
                     model_arrays: Callable[[str], Mapping] | None = None) -> "Reconstruction":
        """``model_arrays(fingerprint)`` supplies what head faces share (``Client.model_arrays``); a reply
        with heads needs it."""
        message.raise_for_error()
        result = message.result
        arrays = protocol.split_face_payloads(message.payloads)
        faces = [FaceData(index=int(meta["index"]), meta=meta, arrays=arrays.get(int(meta["index"]), {}))
                 for meta in result.get("faces", [])]
        for face in faces:
            fingerprint = face.meta.get("model_fingerprint")
            if fingerprint is not None:
                if model_arrays is None:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "a head reply needs its model's shared arrays: "
                                                               "parse it with Client.reconstruction")
                face.arrays.update(model_arrays(str(fingerprint)))
            missing = [name for name in protocol.arrays_for(face.meta) if name not in face.arrays]
            if missing:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"reply for face {face.index} lacks arrays {missing}")
        meta = {k: v for k, v in result.items() if k != "faces"}
        return cls(faces=faces, meta=meta)
