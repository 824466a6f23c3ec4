"""ZeroMQ ROUTER server: validates requests on the I/O thread, reconstructs on model-owning workers.

The I/O thread owns the ROUTER socket and answers ``info`` and ``cancel`` at once, even while
reconstructions run, and validates every request (header, options, the operator's limits) before
it may queue: a bad or too costly request never occupies a worker. Reconstructions wait in one
queue (``max_queue`` in total) for the first idle worker; ``busy`` means every worker is busy and
the queue is full. The workers (``workers.py``: one thread, or N processes with their own models
and a share of the torch threads) push progress messages and encoded replies back to the I/O
thread, which alone talks to clients, because ZeroMQ sockets must not be shared between threads.
A worker process that dies costs only the request it was running (``worker_lost``) and is
restarted; a hung one is answered for and replaced (``worker_pool.py``). What one client can pin is
bounded: the reply bytes held for a connection that does not read (``unread.py``), the connections
per server and per peer address, and a revoked CURVE key's open connections (``connections.py``).

Nothing a client sends can end the loop: protocol violations get a structured error reply, any
other exception an ``internal`` reply carrying only an error id (the traceback is in the log under
that id). Work nobody waits for stops: a request that was cancelled, outlived its client's
``timeout_ms``, ran past the server's time limit, or whose client disconnected (sends to it fail:
``ROUTER_MANDATORY``; queued requests are probed with a "queued" progress message every second;
ZeroMQ heartbeats notice peers that vanished without closing) is dropped from the queue or stopped
at its running stage's end.
"""
from __future__ import annotations

import collections
import itertools
import logging
import shutil
import tempfile
import threading
import time
from typing import Callable

import zmq

from addon.wire import options, protocol
from addon.wire.protocol import ErrorCode, ProtocolError, clip

from . import __version__
from .config import ReconstructionConfig, ServerConfig
from .log_limits import RateLimitedLog, log_internal_error
from .connections import ConnectionGuard, descriptor_budget
from .limits import MB, check_photo_count, check_video, face_reply_bytes
from .security import ZapHandler, check_bind, is_loopback
from .unread import UnreadReplies
from .worker_pool import STOP_SECONDS, Job, ProcessWorker, ThreadWorker, WorkerPool
from .workers import WorkerFailed, gets_head, internal_reply

log = logging.getLogger("faceforge.server")

PROBE_INTERVAL = 1.0      # seconds between "queued" progress messages, which also find vanished clients
HEARTBEAT_MS = 5000       # ZeroMQ heartbeats: a peer silent for 3 intervals is disconnected
# What ``info`` tells a client on another machine: no library versions, no process ids.
REMOTE_INFO_KEYS = ("protocol", "protocol_version", "server_version", "device", "device_name", "models",
                    "defaults", "limits", "queued", "worker_count")

HEAD_MODEL_INTERVAL = 10.0  # seconds between two head_model answers to one client (it keeps them)

class InferenceServer:
    """``pipeline_factory`` builds the models inside each worker (loading is slow: seconds); with
    ``config.workers`` > 1 it must pickle, as each worker process calls its own copy."""

    def __init__(self, config: ServerConfig, pipeline_factory: Callable[[], object],
                 defaults: ReconstructionConfig = ReconstructionConfig()):
        """Raises ValueError for defaults over the limits, or an unauthenticated address other machines reach."""
        self.validate(config, defaults)
        self.config = config
        self.limits = config.limits
        self.defaults = defaults  # requests' options are applied to these (LIMIT options are ceilings)
        self._factory = pipeline_factory
        self._active: dict[tuple, Job] = {}  # queued or running, by (client identity, request id)
        self._waiting: collections.deque[Job] = collections.deque()
        self._router_socket: zmq.Socket | None = None  # the clients' socket, while serving
        self._guard: ConnectionGuard | None = None      # its connections, counted and capped, while serving
        self._zap: ZapHandler | None = None              # CURVE key checks, with --client-keys
        self._pool = WorkerPool([], self._deliver, config.worker_grace_seconds)
        self._numbers = itertools.count()
        self._context = zmq.Context()
        self._stop = threading.Event()
        self._unread = UnreadReplies(config.max_unread_bytes)  # reply bytes held per client connection
        self._head_model_sent: dict[bytes, float] = {}       # client identity -> when it was last sent them
        self._next_probe = 0.0
        self._rejections = RateLimitedLog(log)        # one line per rejected request, flood-proof
        self._failures = RateLimitedLog(log, rate=1.0)  # internal errors with their tracebacks
        self.address = config.bind  # resolved after bind (port 0 / wildcard)

    @staticmethod
    def validate(config: ServerConfig, defaults: ReconstructionConfig) -> None:
        """What an operator can get wrong, checked before any model loads: ValueError naming it."""
        try:
            config.limits.check(defaults)
        except ProtocolError as err:
            raise ValueError(f"the server's own defaults exceed its limits: {err.message}") from None
        if config.max_unread_bytes < config.limits.reply_bytes:
            raise ValueError(f"--max-unread-mb {config.max_unread_bytes / MB:g} is below --max-reply-mb "
                             f"{config.limits.reply_bytes / MB:g}: no reply of the largest size could be sent")
        problem = check_bind(config.bind, config.keys, config.insecure)
        if problem:
            raise ValueError(problem)

    def stop(self) -> None:
        self._stop.set()

    def serve_forever(self, on_ready: Callable[[str, dict], None] | None = None) -> None:
        """Raises RuntimeError when the models fail to load (``WorkerFailed``) or the address cannot be bound."""
        zap = self._zap = ZapHandler(self._context, self.config.keys) if self.config.keys else None
        router = self._router_socket = self._router()
        allowed = descriptor_budget(self.config.max_connections)
        self._guard = ConnectionGuard(router, allowed, min(allowed, self.config.max_connections_per_peer))
        folder = tempfile.mkdtemp(prefix="faceforge-workers-")  # 0700: the worker processes' sockets
        try:
            router.bind(self.config.bind)
            self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._pool.workers = self._make_workers(folder)
            if not self._pool.start(self._stop):
                return
            if on_ready:
                on_ready(self.address, self._pool.info)
            self._loop(router, zap)
        finally:
            for job in self._active.values():  # nobody will read the replies of what is still queued
                job.cancelled = True
            stopped = self._pool.stop(time.monotonic() + STOP_SECONDS)
            self._guard.close()
            for socket in (router, zap and zap.socket):
                if socket is not None:
                    socket.close(linger=0)
            if stopped:
                self._context.term()
            else:  # term() would wait for the worker thread's socket until its stage ends: the process exits anyway
                log.warning("the worker thread is still in a stage after %.0f s: leaving without it", STOP_SECONDS)
            shutil.rmtree(folder, ignore_errors=True)

    def _make_workers(self, folder: str) -> list:
        if self.config.workers == 1:
            return [ThreadWorker(0, self._context, self._factory, self.limits)]
        return [ProcessWorker(n, self._context, self._factory, self.limits, folder) for n in range(self.config.workers)]

    def _router(self) -> zmq.Socket:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished client fails: its work is dropped
        router.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * HEARTBEAT_MS)
        if self.config.keys:
            self.config.keys.apply(router)
        return router

    def _loop(self, router, zap) -> None:
        while not self._stop.is_set():
            poller = zmq.Poller()
            self._pool.register(poller)
            for socket in (router, zap and zap.socket, self._guard.monitor):
                if socket is not None:
                    poller.register(socket, zmq.POLLIN)
            events = dict(poller.poll(100))
            try:
                if self._guard.monitor in events:
                    self._guard.handle()
                if zap is not None and zap.socket in events:
                    zap.handle()
                self._pool.handle(events)
                if router in events:
                    self._handle(router, router.recv_multipart(copy=False))
                self._pool.tend(self.limits.request_seconds)
                self._pool.dispatch(self._waiting)
                self._probe_waiting(router)
                self._rejections.flush()
            except WorkerFailed:
                raise
            except Exception:  # noqa: BLE001 - last resort: the loop outlives any single message
                log_internal_error(self._failures, "the I/O loop")

    def _deliver(self, identity: bytes, frames: list, done: Job | None) -> None:
        """A worker's progress or reply (``done``: the job it ends), or the pool's error answering a job."""
        if done is not None:
            self._active.pop(done.key, None)
        self._send(self._router_socket, [identity, *frames])

    def _send(self, router, parts: list) -> None:
        """Send to a client without ever blocking the loop; a client that is gone loses its queued work,
        and so does one that has not read what it was sent (``UnreadReplies``: the message is dropped)."""
        identity = parts[0].bytes if isinstance(parts[0], zmq.Frame) else bytes(parts[0])
        frames = parts[1:]
        size = self._unread.size(frames)
        if size:
            held = self._unread.of(identity)
            if held + size > self._unread.limit:
                self._drop_client_work(identity, f"has not read {held / MB:.1f} MB of replies (limit "
                                       f"{self._unread.limit / MB:g} MB per connection): a message of "
                                       f"{size / MB:.1f} MB to it was dropped")
                return
            frames = self._unread.tracked(frames)
        try:
            router.send_multipart([parts[0], *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._drop_client_work(identity, "disconnected")
            elif exc.errno == zmq.EAGAIN:
                self._rejections.warning("client %s is not reading its replies: a message to it was dropped",
                                         identity.hex()[:16])
            else:
                raise
        else:
            self._unread.sent(identity, frames)

    def _handle(self, router, frames) -> None:
        identity, body = frames[0].bytes, frames[1:]
        key = self._guard.seen(frames[-1])
        if self._zap is not None and key not in self._zap.allowed:  # its key was removed from --client-keys
            self._rejections.warning("a message from revoked client key %s: its connection is closed",
                                     clip(key.decode(errors="replace")))
            self._guard.drop(frames[-1])
            return
        try:
            reply = self._answer(identity, body)
        except ProtocolError as err:
            request_id = protocol.read_id(body)  # only rejected requests need their id dug out by hand
            self._rejections.warning("rejected request %s: %s", clip(request_id), clip(err.message, 200))
            reply = protocol.encode_error(request_id, err.code, err.message)
        except Exception:  # noqa: BLE001 - a bug must cost one request, never the server
            request_id = protocol.read_id(body)
            reply = internal_reply(self._failures, request_id, f"request {clip(request_id)}")
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
        if message.op == "head_model":
            return protocol.encode_reply(message.id, *self._shared_head_arrays(identity, message.params))
        self._enqueue(identity, message)
        return None

    def _shared_head_arrays(self, identity: bytes, params: dict) -> tuple[dict, dict]:
        """The ``head_model`` op: the arrays every head shares, if ``params.fingerprint`` names this model.

        16 MiB for a request of a few bytes and no work: a client that asked again at once would make
        the server queue gigabytes for it, so each client gets them once per ``HEAD_MODEL_INTERVAL``
        (a client keeps them for its process's lifetime; ``Client.model_arrays``)."""
        if self._pool.head_model is None:
            raise ProtocolError(ErrorCode.NO_MODEL, "this server has no head model: head mode is off "
                                                    "(`python -m inference_server model fetch` installs it)")
        result, arrays = self._pool.head_model
        wanted = params.get("fingerprint")
        if wanted is not None and wanted != result["fingerprint"]:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"head model {clip(wanted)} is not this server's "
                                                       f"({result['fingerprint']}): reconstruct again")
        self._check_unread(identity, UnreadReplies.size(list(arrays.values())))
        now = time.monotonic()
        self._head_model_sent = {peer: when for peer, when in self._head_model_sent.items()
                                 if now - when < HEAD_MODEL_INTERVAL}
        if identity in self._head_model_sent:
            wait = HEAD_MODEL_INTERVAL - (now - self._head_model_sent[identity])
            raise ProtocolError(ErrorCode.BUSY, f"the head model's arrays were sent to this client "
                                                f"{now - self._head_model_sent[identity]:.1f} s ago and are kept by "
                                                f"it; ask again in {wait:.0f} s if they were lost")
        self._head_model_sent[identity] = now
        return result, arrays

    def _is_remote(self, frame) -> bool:
        if is_loopback(self.address):
            return False
        try:
            return not is_loopback(frame.get("Peer-Address"))
        except (zmq.ZMQError, AttributeError):  # no peer address (inproc): this process
            return False

    def _enqueue(self, identity: bytes, message: protocol.Message) -> None:
        kind, media = protocol.request_media(message.payloads)
        config = self.defaults.with_params(message.params)
        head = gets_head(config, self._pool.info)
        self.limits.check(config, head)
        if kind == "video":
            check_video(config, head)
        else:
            check_photo_count(len(media), config, head)
        self._check_unread(identity, face_reply_bytes(config, head, kind == "video"))
        timeout_ms = message.header.get("timeout_ms")
        deadline = time.monotonic() + (timeout_ms / 1000 if timeout_ms else float("inf"))
        job = Job(identity, message, config, deadline, next(self._numbers))
        if job.key in self._active:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"request id {clip(message.id)} is already in progress")
        if len(self._waiting) >= self.config.max_queue:
            raise ProtocolError(ErrorCode.BUSY, f"server busy: every worker is busy and {self.config.max_queue} "
                                                "requests are already queued")
        self._waiting.append(job)
        self._active[job.key] = job

    def _check_unread(self, identity: bytes, reply_bytes: int) -> None:
        """Refuse work (``busy``) whose reply would take a client's unread bytes over the bound: what it has
        not read yet, plus the replies of its requests that are queued or running."""
        unread = self._unread.of(identity)
        coming = sum(face_reply_bytes(job.config, gets_head(job.config, self._pool.info), job.is_video)
                     for job in self._active.values() if job.identity == identity)
        if unread + coming + reply_bytes > self._unread.limit:
            raise ProtocolError(ErrorCode.BUSY, f"this connection has {unread / MB:.1f} MB of replies unread and "
                                                f"about {coming / MB:.1f} MB on their way; a reply of about "
                                                f"{reply_bytes / MB:.1f} MB more would pass this server's limit of "
                                                f"{self._unread.limit / MB:g} MB per connection: read them first")

    def _cancel(self, identity: bytes, params: dict) -> bool:
        """Mark a client's own queued or running request as cancelled; False if there is none."""
        target = params.get("id")
        if not isinstance(target, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "cancel needs params.id, the id of the request to stop")
        job = self._active.get((identity, target))
        if job is not None:
            self._stop_job(job)
        return job is not None

    def _stop_job(self, job: Job) -> None:
        """A queued job is dropped when it reaches a worker; a running one stops at its next stage."""
        job.cancelled = True
        self._pool.cancel(job)

    def _drop_client_work(self, identity: bytes, why: str) -> None:
        """Stop the queued and running requests of a client that is gone or does not read its replies."""
        jobs = [job for job in self._active.values() if job.identity == identity and not job.cancelled]
        for job in jobs:
            self._stop_job(job)
        if jobs or not why.startswith("disconnected"):
            self._rejections.info("client %s %s: %d request(s) of it dropped", identity.hex()[:16], why, len(jobs))

    def _probe_waiting(self, router) -> None:
        """Tell clients of queued requests where they stand; a send that fails finds a vanished client."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_INTERVAL
        self._unread.prune()
        revoked = self._zap.refresh() if self._zap is not None else set()
        if revoked:
            closed = self._guard.drop_keys(revoked)
            log.warning("%d client key(s) removed from %s: %d open connection(s) of them closed", len(revoked),
                        self.config.keys.folder, closed)
        for ahead, job in enumerate(self._waiting):
            if now - job.queued_at >= PROBE_INTERVAL and not job.cancelled:
                report = protocol.encode_progress(job.message.id, "queued", f"waiting, {ahead} queued ahead", 0.0)
                self._send(router, [job.identity, *report])

    def info(self, remote: bool = False) -> dict:
        """``workers`` (local clients only): each worker's pid, state, torch threads and counts."""
        info = dict(self._pool.info, protocol=protocol.PROTOCOL, protocol_version=protocol.VERSION,
                    server_version=__version__, queued=len(self._waiting), defaults=options.as_dict(self.defaults),
                    limits=dict(self.limits.as_dict(), max_pixels=self.defaults.max_pixels,
                                max_message_bytes=self.config.max_message_bytes, max_queue=self.config.max_queue,
                                max_unread_bytes=self.config.max_unread_bytes,
                                max_connections=self.config.max_connections,
                                max_connections_per_peer=self.config.max_connections_per_peer),
                    worker_count=self.config.workers, workers=self._pool.describe(),
                    connections=self._guard.describe() if self._guard else {})
        return {key: info[key] for key in REMOTE_INFO_KEYS if key in info} if remote else info
