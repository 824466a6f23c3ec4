"""Install Server and Download Head Model: pip and ``model fetch`` in child processes, their output as progress (bpy-free).

Each runs on a worker thread as a ``jobs.Job``: the panel reads ``job.status`` / ``job.fraction``,
Cancel ends the child process, and every failure becomes one sentence an artist can act on, with
the log file's path for the rest.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import environment
from .process import LocalServer, die_with_parent, free_address

TORCH_INDEX = "https://download.pytorch.org/whl/"  # + "cpu" / "cu128": PyTorch's own index of torch builds
NEEDED_GB = {"cpu": 3.0, "cuda": 8.0}               # installed size with headroom for pip's unpacking
ADDON_DIR = Path(__file__).resolve().parents[1]


class Cancelled(RuntimeError):
    pass


class InstallError(RuntimeError):
    """A failed step: one sentence, and the last lines of the child's output for the panel."""

    def __init__(self, message: str, lines: list = ()):
        super().__init__(message)
        self.tail = "\n".join(lines[-12:])


@dataclass(frozen=True)
class InstallSettings:
    base_python: str = ""    # the interpreter to make the environment from; '' = find one
    torch: str = "cpu"       # "cpu" or "cuda"
    wheel_folder: str = ""   # offline: every package from this folder (scripts/server_bundle.py makes one)
    index_url: str = ""      # a mirror or proxy index instead of PyPI; '' = pip's own configuration
    update: bool = False     # newer packages for an existing environment


def server_requirement(addon_dir: Path = ADDON_DIR) -> str:
    """What pip installs as the server: the wheel built into the add-on zip (same version as the add-on),
    else the source checkout the add-on runs from, else the published ``faceforge``."""
    wheels = sorted((addon_dir / "server_wheel").glob("faceforge-*.whl"))
    if wheels:
        return str(wheels[-1])
    checkout = addon_dir.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "inference_server").is_dir():
        return str(checkout)
    return "faceforge"


def source_arguments(settings: InstallSettings, platform: str = sys.platform) -> list:
    """pip's options for where packages come from. CPU torch on Linux and Windows comes from PyTorch's CPU
    index (PyPI's Linux torch is the 3 GB CUDA build); Windows CUDA torch from PyTorch's CUDA index."""
    if settings.wheel_folder:
        return ["--no-index", "--find-links", settings.wheel_folder]
    if settings.index_url:
        return ["--index-url", settings.index_url]
    build = {"cpu": "cpu" if platform in ("linux", "win32") else "", "cuda": "cu128" if platform == "win32" else ""}
    extra = build.get(settings.torch, "")
    return ["--extra-index-url", TORCH_INDEX + extra] if extra else []


def describe_source(settings: InstallSettings) -> str:
    if settings.wheel_folder:
        return f"wheel folder {settings.wheel_folder}"
    return f"index {settings.index_url}" if settings.index_url else "PyPI"


def failure_message(lines: list, code: int, log_path: Path, settings: InstallSettings) -> str:
    """One sentence for what went wrong in pip's output (the log keeps the rest)."""
    text = "\n".join(lines[-60:])
    where = f" (log: {log_path})"
    if re.search(r"No space left on device|Errno 28", text):
        return f"The disk is full: free some space in {log_path.parent} and press Install Server again{where}"
    if re.search(r"ProxyError|407 Proxy|Tunnel connection failed", text):
        return ("The proxy refused pip's connection: check HTTPS_PROXY or pip's configuration (pip.conf / "
                f"pip.ini){where}")
    if re.search(r"NewConnectionError|Temporary failure in name resolution|Name or service not known|getaddrinfo "
                 r"failed|Network is unreachable|ConnectTimeout|ReadTimeout", text):
        return ("pip could not reach the package index (no internet?): connect, set a proxy, or install from a "
                f"wheel folder made with scripts/server_bundle.py (Preferences > Wheel Folder){where}")
    missing = re.search(r"No matching distribution found for (\S+)", text)
    if missing:
        place = f"the wheel folder {settings.wheel_folder}" if settings.wheel_folder else describe_source(settings)
        return f"{missing.group(1)} is not available from {place} for this Python and system{where}"
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    return f"pip failed (exit code {code}): {last}{where}"


class _Child:
    """A child process whose output lines arrive on a queue, so the caller can watch for Cancel meanwhile."""

    def __init__(self, argv: list, log, env: dict | None = None):
        self.log = log
        self.lines: list = []
        self.code: int | None = None
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            encoding="utf-8", errors="replace", bufsize=1, env=env,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,  # Blender gone: pip goes too
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.queue.put(line.rstrip("\r\n"))
        self.queue.put(None)

    def follow(self, job, on_line: Callable[[str], None], on_tick: Callable[[], None] = lambda: None) -> int:
        """Feed each line to ``on_line`` until the child ends; Cancel terminates it (``Cancelled``)."""
        while True:
            if job.cancelled:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                raise Cancelled("cancelled")
            try:
                line = self.queue.get(timeout=0.2)
            except queue.Empty:
                on_tick()
                continue
            if line is None:
                self.code = self.process.wait()
                return self.code
            self.lines.append(line)
            self.log.write(line + "\n")
            self.log.flush()
            on_line(line)


class PipProgress:
    """pip's output -> (fraction, text): packages collected, bytes of the current download, packages installed."""

    def __init__(self, job, planned: list, site_packages: Path, start: float, end: float):
        self.job, self.start, self.end = job, start, end
        self.planned = max(1, len(planned))
        self.site_packages = site_packages
        self.before = self._dist_infos()
        self.collected, self.current, self.installing = 0, "", False

    def _dist_infos(self) -> set:
        try:
            return {name for name in os.listdir(self.site_packages) if name.endswith(".dist-info")}
        except OSError:
            return set()

    def _set(self, fraction: float, text: str) -> None:
        self.job.status = text
        self.job.fraction = max(self.job.fraction, self.start + (self.end - self.start) * min(1.0, fraction))

    def line(self, line: str) -> None:
        if match := re.match(r"\s*(?:Collecting|Processing|Requirement already satisfied:)\s+(\S+)", line):
            self.collected += 1
            self.current = _project(match.group(1))
            self._set(0.6 * (self.collected - 1) / self.planned,
                      f"Collecting {self.current} ({min(self.collected, self.planned)} of {self.planned})")
        elif match := re.match(r"Progress (\d+) of (\d+)", line):  # --progress-bar raw
            done, total = int(match.group(1)), max(1, int(match.group(2)))
            self._set(0.6 * (self.collected - 1 + done / total) / self.planned,
                      f"Downloading {self.current}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")
        elif line.startswith("Installing collected packages"):
            self.installing = True
            self.tick()

    def tick(self) -> None:
        if self.installing:
            done = len(self._dist_infos() - self.before)
            self._set(0.6 + 0.4 * done / self.planned, f"Installing packages ({done} of {self.planned})")


def _project(requirement: str) -> str:
    """A project's name from what pip prints after Collecting/Processing: a requirement, a wheel or a folder."""
    name = Path(requirement).name
    if name.endswith(".whl"):
        return name.split("-")[0]
    return re.split(r"[<>=!~;\[ (]", name, 1)[0].strip(".") or "the server"


def _run(job, argv: list, log, on_line=lambda line: None, on_tick=lambda: None, env: dict | None = None) -> _Child:
    log.write(f"\n$ {' '.join(map(str, argv))}\n")
    child = _Child([str(part) for part in argv], log, env)
    child.follow(job, on_line, on_tick)
    return child


def _pip_env() -> dict:
    """pip's environment: quiet about its own version, no interactive prompts."""
    return dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")


def _drop_unfinished(site_packages: Path, log) -> None:
    """Forget packages a cancelled pip left half-written, so this run installs them again: pip writes a package's
    RECORD last, and takes a dist-info without one for an installed package."""
    for dist_info in sorted(site_packages.glob("*.dist-info")):
        if not (dist_info / "RECORD").exists():
            log.write(f"removing the unfinished {dist_info.name}\n")
            shutil.rmtree(dist_info, ignore_errors=True)


def install_server(job, settings: InstallSettings, requirement: str | None = None,
                   environ=os.environ, start_timeout: float = 180.0) -> environment.InstalledServer:
    """Make (or update) the environment, install the server into it, and check that it answers ``info``."""
    data = environment.user_data_dir(environ)
    folder = data / environment.FOLDER
    requirement = requirement or server_requirement()
    data.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(data).free / 1e9
    if free_gb < NEEDED_GB[settings.torch] and not (folder / environment.RECORD).exists():
        raise RuntimeError(f"The server needs about {NEEDED_GB[settings.torch]:.0f} GB free in {data}; "
                           f"{free_gb:.1f} GB is free")
    log_path = data / environment.LOG
    python = environment.environment_python(folder)
    sources = source_arguments(settings)
    env = _pip_env()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {environment.stamp()}: {'update' if settings.update else 'install'} {requirement} "
                  f"from {describe_source(settings)}\n")
        environment.forget(environ)

        def check(child: _Child) -> None:
            if child.code != 0:
                raise InstallError(failure_message(child.lines, child.code, log_path, settings), child.lines)

        if not python.exists():
            base = environment.find_base_python(settings.base_python,
                                                environment.wheel_folder_python(settings.wheel_folder))
            job.status = f"Creating the Python environment (Python {'.'.join(map(str, base.version))})"
            created = _run(job, [base.path, "-m", "venv", folder], log, env=env)
            if created.code != 0 or not python.exists():
                raise InstallError(f"{base.path} could not make an environment in {folder}: "
                                   f"{(created.lines or ['no output'])[-1]} (log: {log_path})", created.lines)
        job.fraction, job.status = 0.04, "Updating pip"
        _run(job, [python, "-m", "pip", "install", "--upgrade", "pip", *sources], log, env=env)  # an old pip still works
        pip_version = _run(job, [python, "-m", "pip", "--version"], log, env=env).lines[-1:] or [""]
        raw = re.search(r"pip (\d+)\.(\d+)", pip_version[0])
        progress_bar = ["--progress-bar", "raw"] if raw and (int(raw[1]), int(raw[2])) >= (24, 1) else []
        upgrade = ["--upgrade"] if settings.update else []

        site = Path(_run(job, [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], log,
                         env=env).lines[-1])
        _drop_unfinished(site, log)
        job.fraction, job.status = 0.07, "Working out which packages to install"
        with tempfile.TemporaryDirectory() as scratch:
            report = Path(scratch) / "report.json"
            check(_run(job, [python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", report,
                             *upgrade, *sources, requirement], log, env=env))
            planned = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
        progress = PipProgress(job, planned, site, 0.1, 0.9)
        check(_run(job, [python, "-m", "pip", "install", *progress_bar, *upgrade, *sources, requirement], log,
                   progress.line, progress.tick, env=env))
        if settings.update:  # the same version number rebuilt (a checkout) is still the newer server
            check(_run(job, [python, "-m", "pip", "install", "--force-reinstall", "--no-deps", *sources,
                             requirement], log, env=env))

        job.fraction, job.status = 0.92, "Checking the server starts"
        server = LocalServer(str(python), free_address(), log_path=str(data / "server-check.log"))
        try:
            info = server.start(start_timeout, cancel=job.cancel_event)
        except RuntimeError as exc:
            if job.cancelled:
                raise Cancelled("cancelled") from None
            raise RuntimeError(f"The server installed but does not start: {exc}") from None
        finally:
            server.stop()
        record = environment.InstalledServer(str(python), str(info.get("server_version", "?")),
                                             str(info.get("torch", "?")), str(info.get("device", "?")),
                                             describe_source(settings), environment.stamp())
        record.write(folder)
        log.write(f"=== installed: {record}\n")
    return record


def remove_server(job, environ=os.environ) -> Path:
    """Delete the environment (the models stay: they belong to the data folder, not to the environment)."""
    folder = environment.environment_dir(environ)
    environment.forget(environ)
    job.status = f"Removing {folder}"
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        raise RuntimeError(f"Could not remove all of {folder}: a file in it is in use (a running server?)")
    return folder


MODEL_LICENCE = ("ICT-FaceKit, by the USC Institute for Creative Technologies, is under the MIT licence: free to "
                 "use, change and share, keeping its copyright notice. FaceForge downloads it from GitHub "
                 "(ICT-VGL/ICT-FaceKit, a pinned commit) and checks it before installing.")


def download_model(job, python: str, source: str = "", cwd: str | None = None) -> str:
    """``model fetch`` (``source`` '' or an http(s) address) or ``model install`` (a downloaded zip or folder) with
    the server's interpreter; returns its last line. RuntimeError carries the command's own error line."""
    if not source or re.match(r"https?://", source):
        argv = [python, "-m", "inference_server", "model", "fetch", *(["--url", source] if source else [])]
    else:
        argv = [python, "-m", "inference_server", "model", "install", source]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if cwd:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [cwd, env.get("PYTHONPATH")]))

    def on_line(line: str) -> None:
        if match := re.search(r"(\d+)% \(", line):
            job.fraction = 0.9 * int(match.group(1)) / 100
        job.status = line[:1].upper() + line[1:80]

    log = open(os.devnull, "w")
    try:
        child = _run(job, argv, log, on_line, env=env)
    finally:
        log.close()
    if child.code != 0:
        error = next((line for line in reversed(child.lines) if line.startswith("error:")),
                     (child.lines or ["no output"])[-1])
        raise InstallError(f"The head model was not installed: {error.removeprefix('error:').strip()}",
                           child.lines)
    return (child.lines or [""])[-1]
