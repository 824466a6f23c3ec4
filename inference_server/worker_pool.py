"""The I/O thread's side of the workers: a handle per worker, and the pool that keeps them serving.

Only the first start may stop the server: models that fail to load there would fail in every
worker, so the operator hears of it at once. Once serving, no worker's fate stops the server: a
process that dies (killed, crashed, or failing to load its models again) costs the request it ran
(``worker_lost``) and starts again after a back-off (``BACKOFF``: 0 s, then doubling to 60 s while
it keeps dying before it is ready), while the other workers keep serving. A worker still holding a
request ``grace`` seconds past its client's deadline or the time limit is hung (stopped,
deadlocked in a library): the I/O thread answers the request itself (``timeout`` / ``too_large``),
then kills and replaces a process worker; so is a restarted process still loading its models after
``START_SECONDS``. The thread worker (``--workers 1``) cannot be killed: its
request is answered, and its late reply, should it come, is dropped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import zmq

from addon.wire import options, protocol
from addon.wire.protocol import ErrorCode, clip

from .limits import RequestLimits
from .workers import WorkerFailed, process_main, thread_main

log = logging.getLogger("faceforge.server")

BACKOFF = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)  # seconds before the n-th start since it was last ready
GRACE_SECONDS = 10.0  # a worker this late past its request's deadline or time limit is hung
STOP_SECONDS = 3.0    # a stopping worker's time to finish its running stage (then killed): within LocalServer.stop's 5 s
START_SECONDS = 300.0  # a restarted worker still loading its models after this long is hung: killed, retried


@dataclass
class Job:
    """A validated reconstruct request, from the I/O thread's queue to its worker's reply."""

    identity: bytes
    message: protocol.Message
    config: object                    # ReconstructionConfig with the request's options applied
    deadline: float                   # time.monotonic() after which nobody waits for the reply
    seq: int                          # the server's number for it: cancels name it
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def key(self) -> tuple:
        return self.identity, self.message.id

    def frames(self) -> list:
        """The job message for its worker (the deadline as seconds left: clocks are per process)."""
        left = self.deadline - time.monotonic()
        kind, media = protocol.request_media(self.message.payloads)
        header = {"seq": self.seq, "id": self.message.id, "config": options.as_dict(self.config),
                  "seconds_left": None if left == float("inf") else left, "cancelled": self.cancelled,
                  "video": kind == "video"}
        return [b"job", json.dumps(header).encode(), *media]

    @property
    def is_video(self) -> bool:
        return "video" in self.message.payloads




class Worker:
    """The I/O thread's handle on one worker: its socket, its state and the job it runs."""

    sentinel = None  # a file descriptor readable once the worker is gone (processes only)

    def __init__(self, index: int, context: zmq.Context, factory: Callable[[], object], limits: RequestLimits):
        self.index = index
        self.context = context
        self.factory = factory
        self.limits = limits
        self.socket: zmq.Socket | None = None
        self.state = "stopped"  # starting -> idle <-> busy (-> hung) ; a dead process: down -> starting
        self.job: Job | None = None
        self.info: dict = {}
        self.served = 0
        self.restarts = 0
        self.failures = 0          # deaths since it was last ready: the back-off before its next start
        self.retry_at = 0.0        # when a worker that is "down" starts again
        self.job_started = 0.0     # when it was handed its job (time.monotonic())
        self.started_at = 0.0      # when it was last started

    def start(self) -> None:
        if self.state == "down":
            self.restarts += 1
        self.socket = self.context.socket(zmq.PAIR)
        self.socket.setsockopt(zmq.LINGER, 0)
        address = self._address()
        self.socket.bind(address)
        self.state, self.job, self.info, self.started_at = "starting", None, {}, time.monotonic()
        self._launch(address)

    def ready(self, info: dict) -> None:
        self.state, self.info, self.failures = "idle", info, 0

    def run(self, job: Job) -> bool:
        """Hand ``job`` over; False if the worker's process just died (its sentinel is about to tell),
        as a PAIR socket without its peer would block the I/O thread."""
        try:
            self.socket.send_multipart(job.frames(), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.state, self.job, self.job_started = "busy", job, time.monotonic()
        return True

    def cancel(self) -> None:
        if self.job is None:
            return
        with contextlib.suppress(zmq.Again):  # a dead worker: its request is answered as lost
            self.socket.send_multipart([b"cancel", str(self.job.seq).encode()], flags=zmq.NOBLOCK)

    def finished(self) -> Job | None:
        """The job whose reply arrived (None: a hung worker's late reply, already answered)."""
        job, self.job, self.state = self.job, None, "idle"
        self.served += 1
        return job

    def describe(self) -> dict:
        return {"index": self.index, "kind": self.kind, "pid": self.pid, "state": self.state,
                "threads": self.info.get("threads"), "served": self.served, "restarts": self.restarts}

    def stop(self, deadline: float) -> bool:
        """Ask the worker to stop (its running request ends at its next stage) and wait until ``deadline``;
        False if it is still running (a thread in a long stage: it cannot be killed)."""
        if self.socket is not None:
            with contextlib.suppress(zmq.Again):  # a dead worker reads nothing: it is killed below
                self.socket.send(b"stop", flags=zmq.NOBLOCK)
        stopped = self._join(deadline)
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
        self.state = "stopped"
        return stopped


class ThreadWorker(Worker):
    """``--workers 1``: a thread of the server process (a stand-in pipeline of the tests works too)."""

    kind = "thread"

    @property
    def pid(self) -> int:
        return os.getpid()

    def _address(self) -> str:
        return f"inproc://faceforge-worker-{uuid.uuid4().hex}"

    def _launch(self, address: str) -> None:
        self._thread = threading.Thread(target=thread_main, args=(self.context, address, self.factory, self.limits),
                                        name="faceforge-worker", daemon=True)
        self._thread.start()

    def _join(self, deadline: float) -> bool:
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()


class ProcessWorker(Worker):
    """``--workers N``: a spawned process (a fresh interpreter: no state forked from the server's
    threads); ``factory`` must pickle (``recipe.PipelineRecipe``)."""

    kind = "process"

    def __init__(self, index: int, context: zmq.Context, factory, limits: RequestLimits, folder: str):
        super().__init__(index, context, factory, limits)
        self.folder = folder  # private (0700): no other local user can connect to a worker's socket
        self.process = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def sentinel(self) -> int | None:
        return self.process.sentinel if self.process else None

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def reap(self) -> None:
        """After its death: the process joined, its socket closed; ``start`` launches the next one."""
        self.process.join(0)
        self.socket.close(linger=0)
        self.socket, self.job, self.state = None, None, "down"

    def kill(self) -> None:
        """Stop a hung process (SIGKILL also ends a stopped one); its sentinel then reports the death."""
        self.process.kill()

    def _address(self) -> str:
        return f"ipc://{self.folder}/worker{self.index}-{self.restarts}"

    def _launch(self, address: str) -> None:
        spawn = multiprocessing.get_context("spawn")
        process = spawn.Process(target=process_main, name=f"faceforge-worker{self.index}", daemon=True,
                                args=(self.index, address, self.factory, self.limits, os.getpid()))
        process.start()  # raises if the factory does not pickle
        self.process = process

    def _join(self, deadline: float) -> bool:
        if self.process is None:
            return True
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(1.0)
        return True  # killed if need be: its socket belongs to its own context


class WorkerPool:
    """The workers of one server, driven by its I/O thread. ``deliver(identity, frames, done)`` sends to a
    client; ``done`` is the job those frames end (its reply, or the error that answers it), else None."""

    def __init__(self, workers: list[Worker], deliver: Callable[[bytes, list, Job | None], None],
                 grace: float = GRACE_SECONDS, start_seconds: float = START_SECONDS):
        self.workers = workers
        self.grace = grace
        self.start_seconds = start_seconds
        self.info: dict = {}                                 # the first ready worker's (every worker loads the same)
        self.head_model: tuple[dict, dict] | None = None     # the head_model op's result and arrays
        self._deliver = deliver
        self._serving = False

    def start(self, stop: threading.Event) -> bool:
        """Start every worker and wait until all have loaded their models; False if stopped meanwhile.
        Raises ``WorkerFailed`` when one cannot load them."""
        for worker in self.workers:
            worker.start()
        while any(worker.state == "starting" for worker in self.workers):
            if stop.is_set():
                return False
            poller = zmq.Poller()
            self.register(poller)
            self.handle(dict(poller.poll(100)))
        self._serving = True
        return True

    def register(self, poller: zmq.Poller) -> None:
        """The workers' sockets and their processes' sentinels (re-registered each poll: a restart replaces both)."""
        for worker in self.workers:
            if worker.socket is not None:
                poller.register(worker.socket, zmq.POLLIN)
            if worker.sentinel is not None and worker.state != "down":
                poller.register(worker.sentinel, zmq.POLLIN)

    def handle(self, events: dict) -> None:
        for worker in self.workers:
            if worker.socket is not None and worker.socket in events:
                self._from_worker(worker)
            elif worker.sentinel is not None and worker.state != "down" and worker.sentinel in events:
                self._died(worker)

    def dispatch(self, waiting: deque) -> None:
        """Hand the oldest waiting requests to idle workers."""
        for worker in self.workers:
            if waiting and worker.state == "idle" and worker.run(waiting[0]):
                waiting.popleft()

    def cancel(self, job: Job) -> None:
        for worker in self.workers:
            if worker.job is job:
                worker.cancel()

    def tend(self, request_seconds: float) -> None:
        """Start the workers whose back-off is over; answer the requests of hung workers and replace them."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.state == "down" and now >= worker.retry_at:
                worker.start()
            elif worker.state == "busy" and worker.job is not None:
                self._check_overdue(worker, now, request_seconds)
            elif (worker.state == "starting" and isinstance(worker, ProcessWorker)
                  and now - worker.started_at > self.start_seconds):
                log.error("worker %d (pid %s) has been loading its models for %.0f s: hung; killing it", worker.index,
                          worker.pid, now - worker.started_at)
                worker.kill()  # its death is a failed start: retried after the back-off

    def stop(self, deadline: float) -> bool:
        """Stop every worker by ``deadline``; False if one is still running."""
        return all([worker.stop(deadline) for worker in self.workers])

    def describe(self) -> list[dict]:
        return [worker.describe() for worker in self.workers]

    def _from_worker(self, worker: Worker) -> None:
        kind, *frames = worker.socket.recv_multipart(copy=False)
        kind = kind.bytes
        if kind == b"ready":
            worker.ready(json.loads(frames[0].bytes))
            self.info = self.info or worker.info
            if len(frames) > 1 and self.head_model is None:
                shared = protocol.decode(frames[1:], max_frames=protocol.DEFAULT_MAX_FRAMES)
                self.head_model = shared.result, shared.payloads
            if worker.restarts:
                log.info("worker %d restarted (pid %s)", worker.index, worker.pid)
        elif kind == b"failed":
            text, status = frames[0].bytes.decode(errors="replace"), int(frames[1].bytes)
            if not self._serving:
                raise WorkerFailed(text, status)
            worker.state = "failed"  # its process exits next: the sentinel schedules the retry
            log.error("worker %d could not load its models again: %s", worker.index, clip(text, 300))
        elif kind == b"progress" and worker.job is not None:
            self._deliver(worker.job.identity, frames, None)
        elif kind == b"reply":
            job = worker.finished()
            if job is not None:
                self._deliver(job.identity, frames, job)

    def _died(self, worker: ProcessWorker) -> None:
        """A dead worker's request gets ``worker_lost``; the worker starts again after its back-off."""
        while worker.socket.poll(50):  # what it sent before it died still counts
            self._from_worker(worker)
        if not self._serving and worker.state == "starting":
            raise WorkerFailed(f"worker {worker.index} exited with code {worker.exitcode} while loading its models")
        lost, code, pid = worker.job, worker.exitcode, worker.pid
        if worker.state in ("starting", "failed"):
            worker.failures += 1
        delay = BACKOFF[min(worker.failures, len(BACKOFF) - 1)]
        log.warning("worker %d (pid %s) exited with code %s%s; restarting it%s", worker.index, pid, code,
                    f" while running request {clip(lost.message.id)}" if lost else "",
                    f" in {delay:g} s" if delay else "")
        if lost is not None:
            self._deliver(lost.identity, protocol.encode_error(
                lost.message.id, ErrorCode.WORKER_LOST, f"the server's worker process running this request stopped "
                f"(exit code {code}) and is being restarted; the request was not completed and may be sent again"),
                lost)
        worker.reap()
        worker.retry_at = time.monotonic() + delay

    def _check_overdue(self, worker: Worker, now: float, request_seconds: float) -> None:
        job = worker.job
        limit_at = worker.job_started + request_seconds
        if now < min(job.deadline, limit_at) + self.grace:
            return
        if job.deadline <= limit_at:
            code, why = ErrorCode.TIMEOUT, "its client's deadline passed"
        else:
            code, why = ErrorCode.TOO_LARGE, f"it ran longer than this server's limit of {request_seconds:g} s per request"
        replaced = "is being replaced" if isinstance(worker, ProcessWorker) else "cannot be replaced (--workers 1)"
        log.error("worker %d (pid %s) is hung: request %s is %.0f s past its deadline or time limit; the worker %s", worker.index,
                  worker.pid, clip(job.message.id), now - min(job.deadline, limit_at), replaced)
        self._deliver(job.identity, protocol.encode_error(
            job.message.id, code, f"request stopped: {why}, and its worker did not stop within {self.grace:g} s "
                                  f"more (hung); the worker {replaced}"), job)
        worker.job, worker.state = None, "hung"
        if isinstance(worker, ProcessWorker):
            worker.kill()
