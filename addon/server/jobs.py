"""Worker threads that own the ZeroMQ clients and hand results back as futures (bpy-free).

Blender's UI must never wait on a socket and bpy must never be touched off the main thread, so
each request runs on a ``Worker`` and ends in a ``concurrent.futures.Future`` that the main
thread polls (modal operator timer or ``bpy.app.timers``) before building anything.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
import traceback
from typing import Any, Callable

from ..wire.client import Client
from ..wire.protocol import ErrorCode, ProtocolError

_STOP = object()


class Job:
    """One unit of work: a future plus what the panel shows while it runs."""

    def __init__(self, fn: Callable[["Job"], Any], address: str, status: str):
        self.fn = fn
        self.address = address
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancel_event = threading.Event()
        self.status = status          # written by the worker, read by the panel (a str swap is atomic)
        self.fraction = 0.0           # of the work done, as the server reports it (a float swap is atomic)
        self.started = time.monotonic()
        self.finished: float | None = None
        self.client: Client | None = None  # set by the worker just before ``fn`` runs

    def cancel(self) -> None:
        """Abandon the job: a queued job never starts, a running one stops within ~50 ms."""
        self.cancel_event.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def done(self) -> bool:
        return self.future.done()

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def progress(self) -> float:
        """0..1 for the progress bar: the server's own report of the stages done."""
        return 1.0 if self.done() else self.fraction

    def report(self, progress: dict) -> None:
        """A server progress message (``protocol.encode_progress``) -> what the panel shows; worker thread."""
        text = str(progress.get("text") or progress.get("stage") or "")
        if text:
            self.status = text[:1].upper() + text[1:]
        fraction = progress.get("fraction")
        if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
            self.fraction = min(1.0, max(self.fraction, float(fraction)))


class Worker:
    """A daemon thread running jobs in order, each with this thread's ``Client`` for the job's address."""

    def __init__(self, name: str, timeout: float = 60.0):
        self.name = name
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._current: Job | None = None
        self._lock = threading.Lock()
        self.keys = None  # security.ClientKeys for CURVE connections; None: plain (loopback)

    def submit(self, fn: Callable[[Job], Any], *, address: str = "", status: str = "Working") -> Job:
        job = Job(fn, address, status)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"faceforge-{self.name}", daemon=True)
                self._thread.start()
        self._queue.put(job)
        return job

    def shutdown(self, timeout: float = 2.0) -> None:
        """Cancel the running job and end the thread (unregister, tests)."""
        current = self._current
        if current is not None:
            current.cancel()
        self._queue.put(_STOP)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                self._drop_client()
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            self._current = job
            try:
                if job.address:
                    job.client = self._client_for(job.address)
                job.future.set_result(job.fn(job))
            except BaseException as exc:  # the thread must outlive any job; the future carries the error
                if not isinstance(exc, (ProtocolError, OSError, RuntimeError, ValueError)):
                    traceback.print_exc()  # a bug: keep the traceback for the console, the user gets one line
                job.future.set_exception(exc)
            finally:
                job.finished = time.monotonic()
                job.client = None
                self._current = None

    def _client_for(self, address: str) -> Client:
        keys = self.keys
        if self._client is None or self._client.address != address or self._client.keys is not keys:
            self._drop_client()
            self._client = Client(address, timeout=self.timeout, keys=keys)
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def user_message(exc: BaseException, *, photo: str = "", address: str = "") -> str:
    """One clear sentence for ``self.report`` and the panel, never a traceback."""
    if isinstance(exc, concurrent.futures.CancelledError):
        return "Reconstruction cancelled"
    if isinstance(exc, ProtocolError):
        where = f" in {photo}" if photo else ""
        messages = {
            ErrorCode.UNREACHABLE: f"No FaceForge server answers at {address or 'the configured address'}: "
                                   "press Start Server or check the address in the add-on preferences",
            ErrorCode.TIMEOUT: "The server did not answer in time: it may be busy or slow (CPU); "
                               "raise the request timeout in the add-on preferences",
            ErrorCode.NO_FACE: f"No face found{where}: {exc.message}",
            ErrorCode.BAD_IMAGE: f"The photo cannot be used: {exc.message}",
            ErrorCode.UNSUPPORTED_VERSION: f"Server and add-on speak different protocol versions: {exc.message}",
            ErrorCode.CANCELLED: "Reconstruction cancelled",
            ErrorCode.BUSY: f"The server is busy: {exc.message}",
            ErrorCode.TOO_LARGE: f"The photo is too large: {exc.message}",
            ErrorCode.WORKER_LOST: "The server's worker stopped while reconstructing this photo and was "
                                   "restarted: press Reconstruct Face again",
        }
        return messages.get(exc.code, f"Server error: {exc.message}")
    if isinstance(exc, OSError):
        return f"Cannot read {photo or 'the photo'}: {exc.strerror or exc}"
    if isinstance(exc, (RuntimeError, ValueError)):
        return str(exc)
    return f"Unexpected {type(exc).__name__}: {exc} (see the system console)"
