"""Start, probe and stop a local inference server subprocess (bpy-free).

Shared by the add-on's Start/Stop buttons and the headless batch script. "Started" means the
server answered an ``info`` request, not merely that the process exists: model loading takes
seconds and can fail, and then the log tail is the only useful explanation.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..wire.client import Client
from ..wire.protocol import ProtocolError
from . import environment

_CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when running from a source checkout


def _venv_python(home: Path) -> Path:
    return home / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def find_home(environ=os.environ) -> str:
    """Directory holding the ``inference_server`` package: $FACEFORGE_HOME, else this source checkout, else ''."""
    if environ.get("FACEFORGE_HOME"):
        return environ["FACEFORGE_HOME"]
    return str(_CHECKOUT) if (_CHECKOUT / "inference_server").is_dir() else ""


def can_import_torch(python: str, timeout: float = 60.0) -> bool:
    try:
        return subprocess.run([python, "-c", "import torch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_python(explicit: str | None = None, *, environ=os.environ, executable: str | None = None,
                has_torch: Callable[[str], bool] = can_import_torch) -> str | None:
    """The interpreter a local server runs with, first that fits (add-on, batch and tests alike):

    1. ``explicit`` (the batch's ``--python``, the add-on's Python preference);
    2. ``$FACEFORGE_PYTHON``;
    3. the environment Install Server made and verified (``environment.installed``);
    4. the server home's virtual environment (``find_home``: $FACEFORGE_HOME or this checkout);
    5. this interpreter, if it can import torch (Blender's own binary never qualifies).

    ``None`` when nothing fits: the caller says so instead of starting a server that cannot load torch."""
    if explicit:
        return explicit
    if environ.get("FACEFORGE_PYTHON"):
        return environ["FACEFORGE_PYTHON"]
    server = environment.installed(environ)
    if server is not None:
        return server.python
    home = find_home(environ)
    if home and _venv_python(Path(home)).exists():
        return str(_venv_python(Path(home)))
    executable = sys.executable if executable is None else executable
    if executable and Path(executable).name.lower().startswith("python") and has_torch(executable):
        return executable
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_address() -> str:
    """A ``tcp://127.0.0.1:PORT`` address nothing listens on right now."""
    return f"tcp://127.0.0.1:{free_port()}"


def tcp_in_use(address: str, timeout: float = 0.3) -> bool:
    """Whether something already accepts connections at a ``tcp://host:port`` address (fast, no ZeroMQ wait)."""
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.port:
        return False
    host = "127.0.0.1" if parts.hostname in (None, "*", "0.0.0.0") else parts.hostname
    try:
        with socket.create_connection((host, parts.port), timeout=timeout):
            return True
    except OSError:
        return False


def listening(address: str, every_s: float = 5.0):
    """A check of whether a server we did not start still listens at ``address``, asked at most every ``every_s``
    (a tcp:// address only; other transports count as alive), so a client fails at once when it dies instead of at
    its timeout."""
    if not address.startswith("tcp://"):
        return lambda: True
    state = {"checked": float("-inf"), "alive": True}

    def alive() -> bool:
        now = time.monotonic()
        if now - state["checked"] >= every_s:
            state["checked"], state["alive"] = now, tcp_in_use(address, timeout=1.0)
        return state["alive"]

    return alive


def die_with_parent() -> None:
    """Linux (``preexec_fn``): the child gets SIGTERM when its parent dies without cleaning up (a
    crashed or killed Blender), so no server or worker is left behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalServer:
    """One server subprocess: ``python -m inference_server serve --bind ADDRESS --device DEVICE``."""

    def __init__(self, python: str, address: str, cwd: str | None = None, log_path: str | None = None,
                 device: str = "auto", extra_args: tuple = (), environ: dict | None = None):
        self.python = python
        self.environ = dict(environ or {})  # added to this process's environment, e.g. FACEFORGE_DATA
        self.address = address
        self.cwd = cwd or None
        self.device = device
        self.extra_args = tuple(extra_args)  # further ``serve`` options, e.g. ("--max-queue", "4")
        if log_path is None:
            handle, log_path = tempfile.mkstemp(prefix="faceforge-server-", suffix=".log")
            os.close(handle)
        self.log_path = log_path
        self.info: dict = {}
        self.returncode: int | None = None  # of the last process, once stopped
        self._process: subprocess.Popen | None = None
        self._stop_requested: float | None = None
        self._log = None

    @property
    def command(self) -> list:
        return [self.python, "-m", "inference_server", "serve", "--bind", self.address, "--device", self.device,
                *self.extra_args]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 120.0, cancel: threading.Event | None = None) -> dict:
        """Launch and wait until the server answers ``info``; returns that info. RuntimeError with the log tail otherwise.

        Setting ``cancel`` abandons the start and stops the process.
        """
        if self.running:
            return self.info
        if tcp_in_use(self.address):
            raise RuntimeError(f"{self.address} is already in use: another server is running there "
                               "(use it, stop it, or choose another address)")
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.environ)
        if self.cwd:  # the server imports ``addon.wire`` and ``inference_server`` from its home
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.cwd, env.get("PYTHONPATH")]))
        try:
            self._process = subprocess.Popen(
                self.command, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except OSError as exc:
            self._close_log()
            raise RuntimeError(f"cannot run {self.python!r}: {exc.strerror or exc}") from None
        atexit.register(self.stop)
        self.info = self._wait_ready(timeout, cancel or threading.Event())
        return self.info

    def _wait_ready(self, timeout: float, cancel: threading.Event) -> dict:
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=1.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    self._close_log()
                    raise RuntimeError(f"the server exited with code {code} while starting:\n{self.log_tail()}")
                if cancel.is_set():
                    self.stop()
                    raise RuntimeError("server start cancelled")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the server did not answer within {timeout:g} s:\n{self.log_tail()}")
                try:
                    return client.info(timeout=1.0)
                except ProtocolError:
                    time.sleep(0.2)

    def request_stop(self) -> None:
        """Ask the server to exit (SIGTERM: it finishes cleanly) and return at once; ``poll_stopped`` reaps it."""
        if self._process is not None and self._stop_requested is None:
            self._stop_requested = time.monotonic()
            if self._process.poll() is None:
                self._process.terminate()

    def poll_stopped(self, grace: float = 5.0) -> bool:
        """Never blocks: True once the process is gone (``returncode`` set); SIGKILL ``grace`` s after the request."""
        self.request_stop()
        process = self._process
        if process is None:
            return True
        if process.poll() is None:
            if time.monotonic() - self._stop_requested >= grace:
                process.kill()
            return False
        self._process, self._stop_requested, self.returncode = None, None, process.returncode
        self._close_log()
        atexit.unregister(self.stop)
        return True

    def stop(self, timeout: float = 5.0) -> int | None:
        """Blocking stop for quit, scripts and tests: SIGTERM, then SIGKILL after ``timeout``; safe to call twice.
        Returns the exit code (0: the server shut down cleanly on SIGTERM), None if nothing ran."""
        if self._process is None:
            return None
        while not self.poll_stopped(timeout):
            time.sleep(0.02)
        return self.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 64 * 1024))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_local_server(python: str, log_path: str, timeout: float, device: str = "auto",
                       extra_args: tuple = ()) -> LocalServer:
    """A server of this checkout on a free local address, started and answering (the batch's ``--start-server``, the
    web page's own); RuntimeError with the log's tail when it does not start, and nothing left running."""
    server = LocalServer(python, free_address(), cwd=find_home() or None, log_path=log_path, device=device,
                         extra_args=extra_args)
    try:
        server.start(timeout)
    except Exception:
        server.stop()
        raise
    return server
