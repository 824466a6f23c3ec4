"""What the add-on keeps between operator calls (bpy-free): workers, local server, current request, server status.

Operators write it, the panel reads it, the timers poll its futures. Nothing in it touches bpy,
so the whole request life cycle is unit-tested without Blender.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..data import photo
from ..wire.protocol import ErrorCode, ProtocolError
from .jobs import Job, Worker, user_message
from .process import LocalServer

STATUS_INTERVAL = 3.0   # seconds between server status probes
STATUS_TIMEOUT = 2.0
STOP_GRACE = 10.0       # seconds a stopping server gets to exit cleanly before SIGKILL (it needs at most ~3 s)


@dataclass
class Request:
    """A reconstruction in flight and everything needed to build its objects once it lands."""

    job: Job
    photo: str                  # what the user picked: a file path or an image name; objects are named after it
    options: dict               # sent to the server
    settings: Any               # meshdata.BuildSettings, applied on the main thread
    location: tuple = (0.0, 0.0, 0.0)
    address: str = ""


@dataclass
class Session:
    requests: Worker = field(default_factory=lambda: Worker("requests"))
    probes: Worker = field(default_factory=lambda: Worker("probes"))
    server: LocalServer | None = None      # only a server this add-on started
    server_job: Job | None = None          # a start in progress
    stopping: LocalServer | None = None    # a stop in progress (signalled, not yet exited)
    server_log: str = ""                   # log tail of a failed server start or installation, shown in the panel
    request: Request | None = None
    key_paths: tuple = ("", "")            # the CURVE key files the workers' clients use
    status: dict | None = None             # last ``info`` reply, None when not connected
    status_error: str = ""
    status_job: Job | None = None
    status_time: float = float("-inf")
    message: tuple = ("", "")              # (level, text) of the last outcome: INFO / WARNING / ERROR
    setups: Worker = field(default_factory=lambda: Worker("setup"))
    setup: Job | None = None               # Install / Update / Remove Server or Download Head Model, running

    @property
    def busy(self) -> bool:
        return self.request is not None and not self.request.job.done()

    def use_keys(self, server_key: str, client_key: str) -> None:
        """CURVE keys (file paths from the preferences) for every later connection; both empty: plain.
        Raises ``security.KeyFileError`` (a ValueError with a one-line message) for unusable files."""
        if (server_key, client_key) == self.key_paths:
            return
        from ..wire import security

        keys = security.client_keys(server_key or None, client_key or None)
        self.key_paths = (server_key, client_key)
        self.requests.keys = self.probes.keys = keys

    def submit_reconstruction(self, source: str | Callable[[], bytes], *, photo_label: str, options: dict, settings: Any,
                              location: tuple, address: str, timeout: float, more_photos: tuple = (),
                              video: bool = False) -> Request:
        """Queue one request; ``source`` is a file path or a callable producing the photo's bytes (run off-thread);
        ``more_photos``: other photos of the same person (one head fitted to all), paths or bytes makers as
        ``source``; ``video``: ``source``
        is a video file (one animated head)."""
        def run(job: Job):
            job.status = ("Reading the video" if video else "Reading photo" if not more_photos
                          else f"Reading {1 + len(more_photos)} photos")
            data = photo.read_photo(source) if isinstance(source, str) else source()
            if more_photos:
                data = [data, *(photo.read_photo(more) if isinstance(more, str) else more() for more in more_photos)]
            if job.cancelled:
                raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
            job.status = "Contacting the server"
            info = job.client.info(timeout=min(timeout, STATUS_TIMEOUT * 5))  # version for the metadata, fails fast
            job.status = "Waiting for the server"
            send = job.client.reconstruct_video if video else job.client.reconstruct
            return info, send(data, options, timeout=timeout, cancel=job.cancel_event, on_progress=job.report)

        job = self.requests.submit(run, address=address, status="Queued")
        self.request = Request(job, photo_label, dict(options), settings, tuple(location), address)
        self.message = ("", "")
        return self.request

    def cancel_request(self) -> None:
        if self.request is not None:
            self.request.job.cancel()

    @property
    def cancelling(self) -> bool:
        return self.busy and self.request.job.cancelled

    def request_line(self) -> tuple | None:
        """(text, progress 0..1) of the running request for the panel, None when idle."""
        if not self.busy:
            return None
        job = self.request.job
        if job.cancelled:
            return "Cancelling…", job.progress
        return f"{job.status} ({job.elapsed:.0f} s)", job.progress

    def submit_setup(self, fn: Callable[[Job], Any], status: str) -> Job:
        """Run one set-up step (pip, ``model fetch``) off the main thread; one at a time."""
        if self.setup is not None and not self.setup.done():
            raise ValueError("Another installation is still running: wait for it or cancel it")
        self.setup = self.setups.submit(fn, status=status)
        return self.setup

    def setup_line(self) -> tuple | None:
        """(text, progress 0..1) of the running set-up step, None when none runs."""
        job = self.setup
        if job is None or job.done():
            return None
        return ("Cancelling…" if job.cancelled else f"{job.status} ({job.elapsed:.0f} s)"), job.progress

    def view_state(self) -> tuple:
        """Everything the panel shows from this session, as shown: the sidebar is redrawn only when it changes."""
        line = self.request_line()
        shown_line = None if line is None else (line[0], round(line[1] * 100))
        pid = self.server.pid if self.server is not None and self.server.running else None
        setup = self.setup_line()
        shown_setup = None if setup is None else (setup[0], round(setup[1] * 100))
        return shown_line, self.message, self.status_line(), self.status_error, self.server_log, pid, shown_setup

    def poll_status(self, address: str, now: float | None = None) -> bool:
        """Probe the server every ``STATUS_INTERVAL`` s; True when what the panel shows changed."""
        now = time.monotonic() if now is None else now
        job = self.status_job
        if self.server_job is not None:  # a probe would only report the server being replaced
            if job is not None and job.done():
                self.status_job = None
            return False
        if job is not None and job.done():
            self.status_job = None
            before = (self.status, self.status_error)
            try:
                self.status, self.status_error = job.future.result(), ""
            except BaseException as exc:
                self.status, self.status_error = None, user_message(exc, address=job.address)
            return (self.status, self.status_error) != before
        if job is None and now - self.status_time >= STATUS_INTERVAL:
            self.status_time = now
            self.status_job = self.probes.submit(lambda j: j.client.info(timeout=STATUS_TIMEOUT), address=address,
                                                 status="Checking server")
        return False

    def start_server(self, python: str, address: str, cwd: str, device: str, timeout: float) -> Job:
        """Start a local server on the probe worker (model loading takes seconds)."""
        self.stop_server()
        self.server = LocalServer(python, address, cwd=cwd or None, device=device)
        self.server_log = ""
        self.status, self.status_error = None, ""  # never show the previous server as connected
        self.server_job = self.probes.submit(lambda job: self.server.start(timeout, cancel=job.cancel_event),
                                             status="Starting server")
        return self.server_job

    def finish_server_start(self) -> tuple | None:
        """(level, text) once a start has finished, else None; a failure keeps the log tail for the panel."""
        job = self.server_job
        if job is None or not job.done():
            return None
        self.server_job = None
        self.status_time = float("-inf")  # probe again at once
        try:
            info = job.future.result()
        except BaseException as exc:
            if job.cancelled:
                return "WARNING", "Server start cancelled"
            headline, _, self.server_log = str(exc).partition("\n")
            return "ERROR", f"Could not start the server: {headline}"
        return "INFO", f"Server {info.get('server_version', '?')} ready on {self.server.address} ({device_label(info)})"

    def stop_server(self, timeout: float = STOP_GRACE) -> None:
        """Blocking stop (quit, unregister, before a new start): wait for the process, SIGKILL after ``timeout``."""
        for server in (self.server, self.stopping):
            if server is not None:
                server.stop(timeout)
        self.server = self.stopping = None
        self.status_time = float("-inf")

    def begin_stop_server(self) -> None:
        """The Stop button: signal the server and return at once; ``poll_stopping`` (on a timer) finishes."""
        if self.server is not None:
            self.server.request_stop()
            self.stopping, self.server = self.server, None

    def poll_stopping(self, grace: float = STOP_GRACE) -> tuple | None:
        """Never blocks: (level, text) once the stopping server has exited, SIGKILL after ``grace`` s; else None."""
        if self.stopping is None or not self.stopping.poll_stopped(grace):
            return None
        code, self.stopping = self.stopping.returncode, None
        self.status, self.status_error, self.status_time = None, "", float("-inf")
        if code == 0:
            return "INFO", "Server stopped"
        if code == -signal.SIGKILL:
            return "WARNING", f"Server killed: it did not exit within {grace:g} s of being asked to stop"
        return "WARNING", f"Server stopped with exit code {code}"

    def status_line(self) -> str:
        if self.server_job is not None:
            return f"Starting server… {self.server_job.elapsed:.0f} s"
        if self.stopping is not None:
            return "Stopping server…"
        if self.status is None:
            return "Not connected"
        info = self.status
        return (f"Connected: server {info.get('server_version', '?')}, protocol {info.get('protocol_version', '?')}, "
                f"{device_label(info)}")

    def model_line(self) -> str:
        """Whether the connected server can make full heads, and how to make it able to ('' when unknown)."""
        if self.status is None:
            return ""
        if "head" in self.status.get("geometries", ()):
            return "Head model installed: full heads with expression shape keys"
        return ("No head model on the server (face mode only): Download Head Model installs it (or: faceforge "
                "model fetch, or model install FOLDER|ZIP)")

    def close(self) -> None:
        """Unregister / quit: abandon requests, end threads, stop the server we started."""
        self.cancel_request()
        self.requests.shutdown()
        self.probes.shutdown()
        self.setups.shutdown()  # cancels a running pip: it is terminated, and Install Server resumes it later
        self.stop_server(timeout=3.0)  # Blender is quitting: a clean exit is nice, not worth a long wait


def device_label(info: dict) -> str:
    device = str(info.get("device", "?"))
    if device.startswith("cuda"):
        return f"CUDA ({info.get('device_name', device)})"
    return device.upper()

