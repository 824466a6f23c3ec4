"""Several Blender processes on one batch (``--workers N``), bpy-free.

The parent plans the run as usual (photos, resume decisions, one server started or reached), then
deals the photos to be done round-robin into N shards and runs one child batch per shard -- the
same launcher in the same Blender (or Python with bpy), pointed at the parent's server, with a
hidden ``--shard FILE``. A child builds and writes its photos exactly as a single batch does, and
instead of a progress line and the summary it prints one ``REPORT_PREFIX`` JSON line per photo;
the parent turns those into the one progress display and the one summary.json. Children run in
their own session: Ctrl-C reaches the parent, which passes one SIGINT to each child and waits for
them (each leaves its finished photos committed and its unfinished ones unstarted).
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from ..wire.errors import Exit
from .inputs import Photo
from .outputs import Decision
from .report import PhotoReport

REPORT_PREFIX = "FACEFORGE-PHOTO "
RUN_PREFIX = "FACEFORGE-RUN "  # a child's last line: its run facts (Blender version, requests in flight)
SHARD_PREFIX = ".faceforge-shard-"
MAX_DEFAULT_WORKERS = 8
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "batch.py"


def default_workers(cores: int | None = None) -> int:
    """One Blender per two cores (1 to 8): a Blender worker keeps about one core busy (modifier
    evaluation and file writing run on one thread), the server's torch threads take the rest."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_DEFAULT_WORKERS, cores // 2))


def server_threads(workers: int, cores: int | None = None) -> int:
    """Torch threads for a server the batch starts: the cores its Blender workers leave (at least 1).
    More threads than free cores make torch's threads spin against Blender: on 2 cores a batch's
    server used 0.58 CPU s per photo with 2 threads where it needs about 0.2 with 1."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores - workers)


SERVER_WORKER_BYTES = 1 << 30  # one model worker process: about 0.9 GB resident (face mode, CPU)


def server_workers(workers: int, cores: int | None = None, free_bytes: int | None = None) -> int:
    """Model workers (``serve --workers``) for a server the batch starts: one per Blender worker,
    within the cores those leave and the memory that is free. A server worker keeps about one core
    busy per request (its pipeline is mostly one thread), as a Blender worker does, so the two sides
    keep pace; on 2 cores this is the one worker thread of a plain server."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    free_bytes = free_bytes if free_bytes is not None else available_memory()
    by_memory = free_bytes // (2 * SERVER_WORKER_BYTES) if free_bytes else workers  # half for Blender and others
    return max(1, min(workers, cores - workers, by_memory))


def available_memory() -> int:
    """Memory in bytes that new processes can have: Linux's MemAvailable (free memory plus the page
    cache it can drop), else the free pages where the system says (macOS); 0 where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def deal(photos: Sequence[Photo], count: int) -> list:
    """Round-robin shards (similar photos tend to sit together in a folder); empty ones dropped."""
    return [list(photos[i::count]) for i in range(count) if photos[i::count]]


def write_shard(path: Path, photos: Sequence[Photo], decisions: dict) -> None:
    entries = [{"path": str(p.path), "key": p.key, "members": [str(m) for m in p.members],
                "formats": list(decisions[p.key].missing_formats), "reason": decisions[p.key].reason} for p in photos]
    path.write_text(json.dumps(entries), encoding="utf-8")


def read_shard(path: Path) -> tuple:
    """``(photos, decisions)`` of a shard file written by the parent."""
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    photos = [Photo(path=Path(e["path"]), key=e["key"], members=tuple(map(Path, e["members"]))) for e in entries]
    decisions = {e["key"]: Decision("run", e["reason"], missing_formats=tuple(e["formats"])) for e in entries}
    return photos, decisions


def report_line(report: PhotoReport) -> str:
    return REPORT_PREFIX + json.dumps(asdict(report))


def run_line(run: dict) -> str:
    return RUN_PREFIX + json.dumps({k: run.get(k) for k in ("blender", "max_in_flight")})


def parse_line(line: str):
    """A child's line: its photo's ``PhotoReport``, its run facts (dict), or None for anything else."""
    if line.startswith(REPORT_PREFIX):
        return PhotoReport(**json.loads(line[len(REPORT_PREFIX):]))
    if line.startswith(RUN_PREFIX):
        return dict(json.loads(line[len(RUN_PREFIX):]))
    return None


def launcher(script: Path = SCRIPT) -> list:
    """The command that started this batch, for its children: the Blender binary running the
    script, or this Python with bpy."""
    try:
        import bpy

        binary = bpy.app.binary_path
    except ImportError:
        binary = ""
    if binary and not Path(binary).name.lower().startswith("python") and Path(binary).exists():
        return [binary, "-b", "--factory-startup", "--python-exit-code", "1", "-P", str(script), "--"]
    return [sys.executable, str(script), "--"]


def child_arguments(argv: Sequence[str], address: str, shard: Path) -> list:
    """The parent's own arguments for a child: its server, one worker, its shard."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--start-server",):
            continue
        elif arg in ("--workers", "--server", "--summary"):
            skip = True
        elif arg.startswith(("--workers=", "--server=", "--summary=")):
            continue
        else:
            kept.append(arg)
    return kept + ["--server", address, "--workers", "1", "--shard", str(shard)]


class Children:
    """The child batches of one run: started, read line by line (a thread per child), stopped.

    ``events()`` yields ``(index, parse_line(line), line)`` as children print, then
    ``(index, None, None)`` once per child that exited."""

    def __init__(self, commands: Sequence[list], cwd: str | None = None):
        from ..server.process import die_with_parent  # imports pyzmq: only once the batch runs

        self.processes = []
        self.events_queue: queue.Queue = queue.Queue()
        self.running = len(commands)  # children whose end was not yet yielded
        for index, command in enumerate(commands):
            process = subprocess.Popen(
                command, cwd=cwd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
            self.processes.append(process)
            threading.Thread(target=self._read, args=(index, process), daemon=True).start()

    def _read(self, index: int, process) -> None:
        for line in process.stdout:
            line = line.rstrip("\n")
            try:
                item = parse_line(line)
            except (ValueError, TypeError):
                item = None
            self.events_queue.put((index, item, line))
        process.wait()
        self.events_queue.put((index, None, None))

    def events(self):
        while self.running:
            event = self.events_queue.get()
            if event[2] is None:
                self.running -= 1
            yield event

    def interrupt(self) -> None:
        """One SIGINT each: a child stops like an interrupted batch (finished photos kept)."""
        for process in self.processes:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGINT)
                except OSError:
                    pass

    def stop(self, grace: float = 30.0) -> None:
        """Wait for every child; SIGKILL what is still running after ``grace`` seconds."""
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def exit_codes(self) -> list:
        return [process.returncode for process in self.processes]


def overall_exit(codes: Sequence[int | None]) -> int:
    """The parent's status from its children's: the worst of server trouble, interruption, failure."""
    for status in (Exit.SERVER, Exit.INTERRUPTED):
        if status in codes:
            return status
    return Exit.OK if all(code in (Exit.OK, Exit.FAILED) for code in codes) else Exit.FAILED


def run_children(commands: Sequence[list], record: Callable[[PhotoReport], None], facts: Callable[[dict], None],
                 show: Callable[[str], None], verbose: bool) -> list:
    """Run the children to the end, recording each photo as its report arrives (``facts`` gets each
    child's run facts); returns their exit codes. On KeyboardInterrupt (the parent's Ctrl-C) the
    children are interrupted, their remaining reports recorded, and the interrupt raised again."""
    children = Children(commands)

    def handle(index: int, item, line: str | None) -> None:
        if isinstance(item, PhotoReport):
            record(item)
        elif isinstance(item, dict):
            facts(item)
        elif line and (verbose or line.startswith(("error:", "warning:"))):
            show(f"[worker {index + 1}] {line}")

    try:
        for event in children.events():
            handle(*event)
    except KeyboardInterrupt:
        children.interrupt()
        for event in children.events():
            handle(*event)
        raise
    finally:
        children.stop()
    return children.exit_codes
