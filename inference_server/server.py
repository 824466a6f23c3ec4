"""ZeroMQ ROUTER server: validates requests on the I/O thread, reconstructs on a worker thread.

The I/O thread owns the ROUTER socket and answers ``info`` and ``cancel`` at once, even while a
reconstruction runs, and validates every request (header, options, the operator's limits) before
it may queue: a bad or too costly request never occupies the worker. Reconstructions queue for the
worker, which owns the models (MediaPipe graphs are bound to the thread that made them) and pushes
progress messages and encoded replies back over an inproc socket, because ZeroMQ sockets must not
be shared between threads.

Nothing a client sends can end the loop: protocol violations get a structured error reply, any
other exception an ``internal`` reply carrying only an error id (the traceback is in the log under
that id). Work nobody waits for stops: a request that was cancelled, outlived its client's
``timeout_ms``, ran past the server's time limit, or whose client disconnected (sends to it fail:
``ROUTER_MANDATORY``; queued requests are probed with a "queued" progress message every second;
ZeroMQ heartbeats notice peers that vanished without closing) is dropped from the queue or stopped
at its running stage's end.
"""
from __future__ import annotations

import contextlib
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
from addon.wire.protocol import ErrorCode, ProtocolError, clip

from . import __version__
from .config import ReconstructionConfig, ServerConfig
from .log_limits import RateLimitedLog
from .security import ZapHandler, check_bind, is_loopback

log = logging.getLogger("faceforge.server")

_STOP = object()
PROBE_INTERVAL = 1.0      # seconds between "queued" progress messages, which also find vanished clients
HEARTBEAT_MS = 5000       # ZeroMQ heartbeats: a peer silent for 3 intervals is disconnected
# What ``info`` tells a client on another machine: no library versions.
REMOTE_INFO_KEYS = ("protocol", "protocol_version", "server_version", "device", "device_name", "models",
                    "defaults", "limits", "queued")


@dataclass
class Job:
    """A validated reconstruct request, from the I/O thread's queue to the worker's reply."""

    identity: bytes
    message: protocol.Message
    config: object                    # ReconstructionConfig with the request's options applied
    deadline: float                   # time.monotonic() after which nobody waits for the reply
    max_seconds: float                # the server's time limit once the request runs
    queued_at: float = field(default_factory=time.monotonic)
    started: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> tuple:
        return self.identity, self.message.id

    def check(self, stage: str) -> None:
        """Raise at a stage boundary if nobody wants this request any more, or it ran too long."""
        if self.cancelled.is_set():
            raise ProtocolError(ErrorCode.CANCELLED, "request cancelled by the client (or the client is gone)")
        now = time.monotonic()
        if now > self.deadline:
            raise ProtocolError(ErrorCode.CANCELLED, "request stopped: its client's deadline has passed")
        if self.started is not None and now - self.started > self.max_seconds:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"request stopped before stage {stage!r}: it ran longer than "
                                                     f"this server's limit of {self.max_seconds:g} s per request")


class InferenceServer:
    """``pipeline_factory`` builds the models inside the worker thread (loading is slow: seconds)."""

    def __init__(self, config: ServerConfig, pipeline_factory: Callable[[], object],
                 defaults: ReconstructionConfig = ReconstructionConfig()):
        """Raises ValueError for defaults over the limits, or an unauthenticated address other machines reach."""
        try:
            config.limits.check(defaults)
        except ProtocolError as err:
            raise ValueError(f"the server's own defaults exceed its limits: {err.message}") from None
        problem = check_bind(config.bind, config.keys, config.insecure)
        if problem:
            raise ValueError(problem)
        self.config = config
        self.limits = config.limits
        self.defaults = defaults  # requests' options are applied to these (LIMIT options are ceilings)
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
        self._next_probe = 0.0
        self._rejections = RateLimitedLog(log)        # one line per rejected request, flood-proof
        self._failures = RateLimitedLog(log, rate=1.0)  # internal errors with their tracebacks
        self.address = config.bind  # resolved after bind (port 0 / wildcard)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self, on_ready: Callable[[str, dict], None] | None = None) -> None:
        zap = ZapHandler(self._context, self.config.keys.allowed) if self.config.keys else None
        router = self._router()
        results = self._context.socket(zmq.PULL)
        results.bind(self._results_address)
        worker = threading.Thread(target=self._work, name="faceforge-worker", daemon=True)
        try:
            router.bind(self.config.bind)
            self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
            worker.start()
            while not self._ready.wait(0.1):
                if self._stop.is_set():
                    return
            if self._startup_error is not None:
                raise RuntimeError(f"models failed to load: {self._startup_error}") from self._startup_error
            if on_ready:
                on_ready(self.address, self._info)
            self._loop(router, results, zap)
        finally:
            with self._active_lock:  # nobody will read the replies of what is still queued
                for job in self._active.values():
                    job.cancelled.set()
            with contextlib.suppress(queue.Full):
                self._jobs.put(_STOP, timeout=5)
            if worker.is_alive():
                worker.join(timeout=5)
            for socket in (router, results, zap and zap.socket):
                if socket is not None:
                    socket.close(linger=0)
            self._context.term()

    def _router(self) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished client fails: its work is dropped
        router.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * HEARTBEAT_MS)
        if self.config.keys:
            self.config.keys.apply(router)
        return router

    def _loop(self, router, results, zap) -> None:
        poller = zmq.Poller()
        for socket in (router, results, zap and zap.socket):
            if socket is not None:
                poller.register(socket, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            try:
                if zap is not None and zap.socket in events:
                    zap.handle()
                if results in events:
                    self._send(router, results.recv_multipart(copy=False))
                if router in events:
                    self._handle(router, router.recv_multipart(copy=False))
                self._probe_waiting(router)
                self._rejections.flush()
            except Exception:  # noqa: BLE001 - last resort: the loop outlives any single message
                self._internal_error("the I/O loop")

    def _send(self, router, parts: list) -> None:
        """Send to a client without ever blocking the loop; a client that is gone loses its queued work."""
        try:
            router.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            identity = parts[0].bytes if isinstance(parts[0], zmq.Frame) else bytes(parts[0])
            if exc.errno == zmq.EHOSTUNREACH:
                self._client_gone(identity)
            elif exc.errno == zmq.EAGAIN:
                self._rejections.warning("client %s is not reading its replies: a message to it was dropped",
                                         identity.hex()[:16])
            else:
                raise

    def _handle(self, router, frames) -> None:
        identity, body = frames[0].bytes, frames[1:]
        try:
            reply = self._answer(identity, body)
        except ProtocolError as err:
            request_id = protocol.read_id(body)  # only rejected requests need their id dug out by hand
            self._rejections.warning("rejected request %s: %s", clip(request_id), clip(err.message, 200))
            reply = protocol.encode_error(request_id, err.code, err.message)
        except Exception:  # noqa: BLE001 - a bug must cost one request, never the server
            request_id = protocol.read_id(body)
            reply = self._internal_reply(request_id, f"request {clip(request_id)}")
        if reply is not None:
            self._send(router, [identity, *reply])

    def _answer(self, identity: bytes, body) -> list | None:
        """The reply to one message, or None when it queued a reconstruction."""
        message = protocol.decode(body, max_frames=protocol.DEFAULT_MAX_FRAMES,
                                  max_bytes=self.config.max_message_bytes)
        protocol.check_request(message)
        if message.op == "info":
            return protocol.encode_reply(message.id, self.info(remote=self._is_remote(body[0])))
        if message.op == "cancel":
            return protocol.encode_reply(message.id, {"cancelled": self._cancel(identity, message.params)})
        self._enqueue(identity, message)
        return None

    def _is_remote(self, frame) -> bool:
        if is_loopback(self.address):
            return False
        try:
            return not is_loopback(frame.get("Peer-Address"))
        except (zmq.ZMQError, AttributeError):  # no peer address (inproc): this process
            return False

    def _enqueue(self, identity: bytes, message: protocol.Message) -> None:
        image = message.payloads.get("image")
        if not isinstance(image, memoryview):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "reconstruct needs an 'image' frame of kind 'bytes' holding "
                                                       "the photo file (JPEG, PNG, WebP, BMP or TIFF)")
        config = self.defaults.with_params(message.params)
        self.limits.check(config, self._head(config))
        timeout_ms = message.header.get("timeout_ms")
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms else float("inf"))
        job = Job(identity, message, config, deadline, self.limits.request_seconds)
        with self._active_lock:
            if job.key in self._active:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"request id {clip(message.id)} is already in progress")
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                raise ProtocolError(ErrorCode.BUSY, f"server busy: {self.config.max_queue} requests already queued") from None
            self._active[job.key] = job

    def _head(self, config) -> bool:
        """Whether a request gets head geometry (``auto`` does where the model is installed)."""
        geometry = getattr(config, "geometry", "face")
        return geometry == "head" or (geometry == "auto" and "head" in self._info.get("geometries", ()))

    def _cancel(self, identity: bytes, params: dict) -> bool:
        """Mark a client's own queued or running request as cancelled; False if there is none."""
        target = params.get("id")
        if not isinstance(target, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "cancel needs params.id, the id of the request to stop")
        with self._active_lock:
            job = self._active.get((identity, target))
        if job is not None:
            job.cancelled.set()
        return job is not None

    def _client_gone(self, identity: bytes) -> None:
        with self._active_lock:
            jobs = [job for job in self._active.values() if job.identity == identity and not job.cancelled.is_set()]
        for job in jobs:
            job.cancelled.set()
        if jobs:
            self._rejections.info("client %s disconnected: %d request(s) of it dropped", identity.hex()[:16], len(jobs))

    def _probe_waiting(self, router) -> None:
        """Tell clients of queued requests where they stand; a send that fails finds a vanished client."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_INTERVAL
        with self._active_lock:
            waiting = sorted((job for job in self._active.values() if job.started is None), key=lambda j: j.queued_at)
        for ahead, job in enumerate(waiting):
            if now - job.queued_at >= PROBE_INTERVAL and not job.cancelled.is_set():
                report = protocol.encode_progress(job.message.id, "queued", f"waiting, {ahead} queued ahead", 0.0)
                self._send(router, [job.identity, *report])

    def info(self, remote: bool = False) -> dict:
        info = dict(self._info, protocol=protocol.PROTOCOL, protocol_version=protocol.VERSION,
                    server_version=__version__, queued=self._jobs.qsize(), defaults=options.as_dict(self.defaults),
                    limits=dict(self.limits.as_dict(), max_pixels=self.defaults.max_pixels,
                                max_message_bytes=self.config.max_message_bytes, max_queue=self.config.max_queue))
        return {key: info[key] for key in REMOTE_INFO_KEYS if key in info} if remote else info

    def _internal_reply(self, request_id: str, context: str) -> list:
        error_id = self._internal_error(context)
        return protocol.encode_error(request_id, ErrorCode.INTERNAL,
                                     f"internal server error (error id {error_id}); the server log has the details")

    def _internal_error(self, context: str) -> str:
        """Log the current exception's traceback under a new error id (rate-limited); returns the id."""
        error_id = uuid.uuid4().hex[:12]
        self._failures.log(logging.ERROR, "internal error %s in %s:\n%s", error_id, context, traceback.format_exc())
        return error_id

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
            job.check(stage)
            if faces > 1:
                self.limits.check_reply(job.config, faces, self._head(job.config))
            protocol.send_frames(push, protocol.encode_progress(message.id, stage, text, fraction, face, faces),
                                 prefix=[job.identity])
        try:
            job.check("load")  # a request cancelled while it waited costs nothing
            job.started = time.monotonic()
            result = pipeline.reconstruct(message.payloads["image"], config=job.config, report=report)
            payloads = {}
            for face in result.faces:
                payloads.update(protocol.face_payloads(face.index, face.arrays))
            body = protocol.as_jsonable(dict(result.meta, faces=[face.meta for face in result.faces]))
            log.info("request %s: %d face(s) in %.0f ms", clip(message.id), len(result.faces),
                     sum(result.meta["timings_ms"].values()))
            return protocol.encode_reply(message.id, body, payloads)
        except ProtocolError as err:
            self._rejections.info("request %s: %s", clip(message.id), clip(err.message, 200))
            return protocol.encode_error(message.id, err.code, err.message)
        except Exception:  # noqa: BLE001 - the worker must survive anything a single request triggers
            return self._internal_reply(message.id, f"request {clip(message.id)}")
