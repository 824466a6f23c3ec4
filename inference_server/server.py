"""ZeroMQ ROUTER server: validates requests on the I/O thread, reconstructs on a worker thread.

The I/O thread owns the ROUTER socket and answers ``info`` and ``cancel`` at once, even while a
reconstruction runs, and validates every request's options before it may queue (a bad option never
occupies the worker). Reconstructions queue for the worker, which owns the models (MediaPipe graphs
are bound to the thread that made them) and pushes progress messages and encoded replies back over
an inproc socket, because ZeroMQ sockets must not be shared between threads. A request that was
cancelled, or outlived the ``timeout_ms`` its client sent, is dropped from the queue or stopped at
its running stage's end. Any bad request gets a structured error reply; the loop never dies from one.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable

import zmq

from addon.wire import options, protocol
from addon.wire.protocol import ErrorCode, ProtocolError

from . import __version__
from .config import ReconstructionConfig, ServerConfig

log = logging.getLogger("faceforge.server")

_STOP = object()


@dataclass
class Job:
    """A validated reconstruct request, from the I/O thread's queue to the worker's reply."""

    identity: bytes
    message: protocol.Message
    config: object                    # ReconstructionConfig with the request's options applied
    deadline: float                   # time.monotonic() after which nobody waits for the reply
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple:
        return self.identity, self.message.id

    def check(self) -> None:
        """Raise at a stage boundary if the client no longer wants this request."""
        if self.cancelled.is_set():
            raise ProtocolError(ErrorCode.CANCELLED, "request cancelled by the client")
        if time.monotonic() > self.deadline:
            raise ProtocolError(ErrorCode.CANCELLED, "request stopped: its client's deadline has passed")


class InferenceServer:
    """``pipeline_factory`` builds the models inside the worker thread (loading is slow: seconds)."""

    def __init__(self, config: ServerConfig, pipeline_factory: Callable[[], object],
                 defaults: ReconstructionConfig = ReconstructionConfig()):
        self.config = config
        self.defaults = defaults  # requests' options are applied to these (limits are ceilings)
        self._factory = pipeline_factory
        self._active: dict[tuple, Job] = {}  # queued or running, by (client identity, request id)
        self._active_lock = threading.Lock()
        self._context = zmq.Context()
        self._jobs: queue.Queue = queue.Queue(maxsize=config.max_queue)
        self._results_address = f"inproc://results-{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._info: dict = {}
        self.address = config.bind  # resolved after bind (port 0 / wildcard)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self, on_ready: Callable[[str, dict], None] | None = None) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to vanished clients are dropped, not errors
        results = self._context.socket(zmq.PULL)
        results.bind(self._results_address)
        router.bind(self.config.bind)
        self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        worker = threading.Thread(target=self._work, name="faceforge-worker", daemon=True)
        worker.start()
        try:
            while not self._ready.wait(0.1):
                if self._stop.is_set():
                    return
            if self._startup_error is not None:
                raise RuntimeError(f"models failed to load: {self._startup_error}") from self._startup_error
            if on_ready:
                on_ready(self.address, self._info)
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(results, zmq.POLLIN)
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if results in events:
                    router.send_multipart(results.recv_multipart(copy=False), copy=False)
                if router in events:
                    self._handle(router, router.recv_multipart(copy=False))
        finally:
            self._jobs.put(_STOP)
            worker.join(timeout=5)
            router.close(linger=0)
            results.close(linger=0)
            self._context.term()

    def _handle(self, router, frames) -> None:
        identity, body = frames[0].bytes, frames[1:]
        try:
            message = protocol.decode(body, max_frames=protocol.DEFAULT_MAX_FRAMES,
                                      max_bytes=self.config.max_message_bytes)
            if message.op not in protocol.OPS:
                raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {message.op!r}; known: {', '.join(protocol.OPS)}")
            if message.op == "info":
                reply = protocol.encode_reply(message.id, self.info())
            elif message.op == "cancel":
                reply = protocol.encode_reply(message.id, {"cancelled": self._cancel(identity, message.params)})
            else:
                self._enqueue(identity, message)
                return
        except ProtocolError as err:
            request_id = _best_effort_id(body)  # only rejected requests need their id dug out by hand
            log.warning("rejected request %r: %s", request_id, err)
            reply = protocol.encode_error(request_id, err.code, err.message)
        protocol.send_frames(router, reply, prefix=[identity])

    def _enqueue(self, identity: bytes, message: protocol.Message) -> None:
        if "image" not in message.payloads:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "reconstruct needs an 'image' frame with the photo's bytes")
        config = self.defaults.with_params(message.params)
        timeout_ms = message.header.get("timeout_ms")
        if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or timeout_ms < 1):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'timeout_ms' must be a positive integer")
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms else float("inf"))
        job = Job(identity, message, config, deadline)
        with self._active_lock:
            if job.key in self._active:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"request id {message.id[:40]!r} is already in progress")
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                raise ProtocolError(ErrorCode.BUSY, f"server busy: {self.config.max_queue} requests already queued") from None
            self._active[job.key] = job

    def _cancel(self, identity: bytes, params: dict) -> bool:
        """Mark a client's own queued or running request as cancelled; False if there is none."""
        target = params.get("id") if isinstance(params, dict) else None
        if not isinstance(target, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "cancel needs params.id, the id of the request to stop")
        with self._active_lock:
            job = self._active.get((identity, target))
        if job is not None:
            job.cancelled.set()
        return job is not None

    def info(self) -> dict:
        return dict(self._info, protocol=protocol.PROTOCOL, protocol_version=protocol.VERSION,
                    server_version=__version__, queued=self._jobs.qsize(), defaults=options.as_dict(self.defaults))

    def _work(self) -> None:
        try:
            pipeline = self._factory()
            self._info = pipeline.info()
        except BaseException as exc:  # reported by serve_forever, which owns the process exit
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        push = self._context.socket(zmq.PUSH)
        push.connect(self._results_address)
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                try:
                    reply = self._reconstruct(pipeline, job, push)
                finally:
                    with self._active_lock:
                        self._active.pop(job.key, None)
                protocol.send_frames(push, reply, prefix=[job.identity])
        finally:
            push.close(linger=0)

    def _reconstruct(self, pipeline, job: Job, push) -> list:
        message = job.message

        def report(stage: str, text: str, fraction: float, face: int, faces: int) -> None:
            job.check()
            protocol.send_frames(push, protocol.encode_progress(message.id, stage, text, fraction, face, faces),
                                 prefix=[job.identity])
        try:
            result = pipeline.reconstruct(message.payloads["image"], config=job.config, report=report)
            payloads = {}
            for face in result.faces:
                payloads.update(protocol.face_payloads(face.index, face.arrays))
            body = protocol.as_jsonable(dict(result.meta, faces=[face.meta for face in result.faces]))
            log.info("request %s: %d face(s) in %.0f ms", message.id, len(result.faces),
                     sum(result.meta["timings_ms"].values()))
            return protocol.encode_reply(message.id, body, payloads)
        except ProtocolError as err:
            log.info("request %s: %s", message.id, err)
            return protocol.encode_error(message.id, err.code, err.message)
        except Exception as exc:  # the worker must survive anything a single request triggers
            log.error("request %s failed:\n%s", message.id, traceback.format_exc())
            return protocol.encode_error(message.id, ErrorCode.INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}")


def _best_effort_id(body) -> str:
    """The request id if the header parses at all, so even rejected requests get a matched reply."""
    view = protocol.frame_bytes(body[0]) if body else memoryview(b"")
    if not 0 < view.nbytes <= protocol.MAX_HEADER_BYTES:
        return ""
    try:
        header = json.loads(bytes(view))
    except ValueError:
        return ""
    return str(header.get("id", "")) if isinstance(header, dict) else ""
