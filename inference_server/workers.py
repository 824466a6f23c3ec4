"""The model-owning workers behind the server's I/O thread: one thread (``serve --workers 1``, the
default) or N spawned processes, each building its own pipeline.

Transport: one ZeroMQ PAIR socket per worker, bound by the I/O thread (``inproc`` for the thread,
``ipc`` in a private 0700 folder for a process). The I/O thread already polls ZeroMQ sockets, so a
worker's messages arrive in the same loop as the clients'; multipart frames travel without pickling
(over inproc a reply's arrays are not even copied) and a send never blocks the I/O thread, unlike
multiprocessing pipes; and as each socket has one peer, the I/O thread knows which worker a message
comes from. A worker holds at most one job: the queue stays with the
I/O thread, so an idle worker always takes the oldest waiting request (never one stuck behind a slow
request elsewhere), a queued request is cancelled without crossing a process, and a worker that dies
loses only the request it was running. Cancelling a running request is a message the worker reads
between stages (the pipeline's report callback), the same across a thread or a process boundary.

    I/O thread -> worker:  [b"job", header JSON, image]  |  [b"cancel", seq]  |  [b"stop"]
    worker -> I/O thread:  [b"ready", info JSON, *head_model reply]  |  [b"failed", text, exit status]  |  [b"progress", *frames]  |  [b"reply", *frames]
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

import zmq

from addon.server.process import die_with_parent
from addon.wire import protocol
from addon.wire.errors import Exit
from addon.wire.protocol import ErrorCode, ProtocolError, clip

from .config import ReconstructionConfig, request_geometry
from .limits import RequestLimits
from .log_limits import LOG_FORMAT, RateLimitedLog, log_internal_error



class WorkerFailed(RuntimeError):
    """A worker could not load its models: the server stops (the same models would fail every worker)
    with ``exit`` (``Exit.USAGE`` for a device torch cannot use, ``Exit.SETUP`` for a missing checkpoint)."""

    def __init__(self, text: str, exit: int = Exit.FAILED):
        super().__init__(text)
        self.exit = exit


def gets_head(config, info: dict) -> bool:
    """Whether a request gets head geometry from workers whose ``info`` this is."""
    return request_geometry(config, "head" in info.get("geometries", ())) == "head"


def internal_reply(failures: RateLimitedLog, request_id: str, context: str) -> list:
    error_id = log_internal_error(failures, context)
    return protocol.encode_error(request_id, ErrorCode.INTERNAL,
                                 f"internal server error (error id {error_id}); the server log has the details")


# ----------------------------------------------------------------------------------------------
# The worker's side: the same in a thread and in a process


@dataclass
class RunningJob:
    """A job as its worker sees it."""

    seq: int
    id: str
    config: object
    deadline: float
    max_seconds: float
    cancelled: bool = False
    video: bool = False               # the frame is a video file's bytes, not a photo
    started: float | None = None

    def check(self, stage: str) -> None:
        """Raise at a stage boundary if nobody wants this request any more, or it ran too long."""
        if self.cancelled:
            raise ProtocolError(ErrorCode.CANCELLED, "request cancelled by the client (or the client is gone)")
        now = time.monotonic()
        if now > self.deadline:
            raise ProtocolError(ErrorCode.CANCELLED, "request stopped: its client's deadline has passed")
        if self.started is not None and now - self.started > self.max_seconds:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"request stopped before stage {stage!r}: it ran longer than "
                                                     f"this server's limit of {self.max_seconds:g} s per request")


def run_request(pipeline, media: list, config, video: bool, report=None):
    """One request's work: a video's capture, or a head or faces from one or several photos."""
    report = report or (lambda *args: None)
    if video:
        from .video.capture import capture_video_bytes  # torch-side: the I/O thread imports this module

        return capture_video_bytes(pipeline, media[0], config, report)[0]
    return pipeline.reconstruct(media[0] if len(media) == 1 else media, config=config, report=report)


def reply_frames(request_id: str, result) -> list:
    """A pipeline result as the reply the wire protocol carries (the server's and the Ray batch's)."""
    payloads = {}
    for face in result.faces:
        payloads.update(protocol.face_payloads(face.index, face.arrays))
    body = protocol.as_jsonable(dict(result.meta, faces=[face.meta for face in result.faces]))
    return protocol.encode_reply(request_id, body, payloads)


class JobRunner:
    """Runs the jobs that arrive on ``socket`` one at a time with the pipeline this worker owns."""

    def __init__(self, socket: zmq.Socket, pipeline, limits: RequestLimits, log: logging.Logger):
        self.socket = socket
        self.pipeline = pipeline
        self.limits = limits
        self.info = pipeline.info()
        self.stopping = False
        self._log = log
        self._rejections = RateLimitedLog(log)
        self._failures = RateLimitedLog(log, rate=1.0)

    def serve(self) -> None:
        while not self.stopping:
            kind, *frames = self.socket.recv_multipart(copy=False)
            if kind.bytes == b"stop":
                return
            if kind.bytes == b"job":
                job = self._job(json.loads(frames[0].bytes))
                protocol.send_frames(self.socket, self._run(job, [frame.buffer for frame in frames[1:]]),
                                     prefix=[b"reply"])
            # else: a cancel for a job that already finished

    def _job(self, header: dict) -> RunningJob:
        left = header["seconds_left"]
        return RunningJob(header["seq"], header["id"], ReconstructionConfig(**header["config"]),
                          time.monotonic() + (float("inf") if left is None else left), self.limits.request_seconds,
                          cancelled=header["cancelled"], video=header.get("video", False))

    def _read_control(self, job: RunningJob) -> None:
        """Cancels (or a stop) that arrived while ``job`` ran: read at its stage boundaries."""
        while self.socket.poll(0):
            kind, *rest = self.socket.recv_multipart()
            if kind == b"stop" or (kind == b"cancel" and int(rest[0]) == job.seq):
                job.cancelled = True
                self.stopping = self.stopping or kind == b"stop"

    def _run(self, job: RunningJob, photos: list[memoryview]) -> list:
        def report(stage: str, text: str, fraction: float, face: int, faces: int) -> None:
            self._read_control(job)
            job.check(stage)
            if faces > 1:
                self.limits.check_reply(job.config, faces, gets_head(job.config, self.info))
            protocol.send_frames(self.socket, protocol.encode_progress(job.id, stage, text, fraction, face, faces),
                                 prefix=[b"progress"])
        try:
            job.check("load")  # a request cancelled while it waited costs nothing
            job.started = time.monotonic()
            result = run_request(self.pipeline, photos, job.config, job.video, report)
            self._log.info("request %s: %d face(s) in %.0f ms", clip(job.id), len(result.faces),
                           sum(result.meta["timings_ms"].values()))
            return reply_frames(job.id, result)
        except ProtocolError as err:
            self._rejections.info("request %s: %s", clip(job.id), clip(err.message, 200))
            return protocol.encode_error(job.id, err.code, err.message)
        except Exception:  # noqa: BLE001 - the worker must survive anything a single request triggers
            return internal_reply(self._failures, job.id, f"request {clip(job.id)}")


def run_worker(socket: zmq.Socket, factory: Callable[[], object], limits: RequestLimits,
               log: logging.Logger) -> None:
    """Build the models (seconds), say so on ``socket``, then serve jobs until told to stop."""
    try:
        runner = JobRunner(socket, factory(), limits, log)
    except WorkerFailed as exc:  # the operator's mistake, said in one line
        socket.send_multipart([b"failed", str(exc).encode(), str(int(exc.exit)).encode()])
        return
    except BaseException as exc:  # noqa: BLE001 - reported by the server, which owns the exit
        log.error("models failed to load", exc_info=True)
        socket.send_multipart([b"failed", f"models failed to load: {exc}".encode(), str(int(Exit.FAILED)).encode()])
        return
    ready = [b"ready", json.dumps(protocol.as_jsonable(runner.info)).encode()]
    shared = runner.pipeline.head_model_arrays()
    if shared is not None:  # what every head shares, for the I/O thread to answer ``head_model`` with
        fingerprint, arrays = shared
        ready += protocol.encode_reply("", {"fingerprint": fingerprint}, arrays)
    protocol.send_frames(socket, ready)
    runner.serve()


def thread_main(context: zmq.Context, address: str, factory, limits: RequestLimits) -> None:
    socket = context.socket(zmq.PAIR)
    socket.connect(address)
    try:
        run_worker(socket, factory, limits, logging.getLogger("faceforge.server"))
    finally:
        socket.close(linger=1000)


def process_main(index: int, address: str, factory, limits: RequestLimits, server_pid: int) -> None:
    """A worker process: dies with the server, leaves Ctrl-C (sent to the whole terminal group) to it."""
    die_with_parent()
    if os.getppid() != server_pid:  # the server died before the line above took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    context = zmq.Context()
    socket = context.socket(zmq.PAIR)
    socket.connect(address)
    try:
        run_worker(socket, factory, limits, logging.getLogger(f"faceforge.server.worker{index}"))
    finally:
        socket.close(linger=1000)
        context.term()
