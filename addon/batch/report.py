"""What the batch reports (bpy-free): one ``PhotoReport`` per photo, ``summary.json`` (``Summary``),
the progress line with elapsed time and ETA (``Progress``), and the batch's own error codes."""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

# Error codes the batch itself reports, next to the server's and the client's (``wire.errors.ErrorCode``).
ERR_UNREADABLE = "unreadable"
ERR_EXISTS = "exists"
ERR_BUILD = "build_failed"
ERR_EXPORT = "export_failed"
ERR_SERVER_GONE = "server_gone"


def unreadable(photo_name: str, exc: OSError) -> tuple:
    """(code, text) for a photo whose file cannot be read, worded once for each way the batch reads photos."""
    return ERR_UNREADABLE, f"cannot read {photo_name}: {exc.strerror or exc}"


# ----------------------------------------------------------------------------------------------
# Summary and progress

@dataclass
class PhotoReport:
    photo: str
    key: str
    status: str = "pending"            # ok | skipped | failed
    faces: int = 0
    vertices: int = 0                  # sum over faces, as reconstructed (before modifiers)
    triangles: int = 0
    face_details: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    server_timings_ms: dict = field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None
    note: str | None = None

    def fail(self, code: str, message: str) -> "PhotoReport":
        self.status, self.error_code, self.error = "failed", code, " ".join(str(message).split())
        return self


class Summary:
    """Collects per-photo reports and writes ``summary.json`` atomically (after every photo, so an
    interrupted run still leaves an accurate file)."""

    def __init__(self, path: Path, options: dict, started: float | None = None):
        """``options``: the run's options as the summary records them (``cli.Options.recorded``)."""
        self.path = path
        self.options = options
        self.started = time.time() if started is None else started
        self.reports: list = []
        self.run: dict = {}
        self.finished = False

    def add(self, report: PhotoReport) -> None:
        self.reports.append(report)

    def counts(self) -> dict:
        counts = {"ok": 0, "skipped": 0, "failed": 0, "pending": 0}
        for r in self.reports:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def as_dict(self) -> dict:
        return {
            "faceforge_batch": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "elapsed_s": round(time.time() - self.started, 3),
            "finished": self.finished,
            "options": self.options,
            "run": self.run,
            "counts": self.counts(),
            "photos": [asdict(r) for r in self.reports],
        }

    def write(self) -> str | None:
        """Write the file; on failure (a full disk, an unwritable folder) keep the last good file, remove
        the partial one and return why: losing an update of the summary must not cost the run."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # dotted: never a photo's output name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.as_dict(), indent=2), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return exc.strerror or str(exc)
        return None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """One line per photo: ``[ 3/20] name: status ... | elapsed 00:12 | ETA 00:48``.

    The ETA uses the rate of photos actually processed (skipped ones are nearly free and would make
    it optimistic)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.clock = clock
        self.start = clock()
        self.rate_start = self.start  # reset by begin() once the server is up: startup is not per-photo time
        self.done = 0
        self.processed = 0
        self.processed_time = 0.0

    def begin(self) -> None:
        """Processing starts now (after the server came up): the ETA's rate is measured from here."""
        self.rate_start = self.clock()
        self.processed = 0

    def eta(self) -> float | None:
        remaining = self.total - self.done
        if remaining <= 0:
            return 0.0
        if self.processed == 0:
            return None
        return (self.clock() - self.rate_start) / self.processed * remaining

    def line(self, name: str, status: str, detail: str = "", *, processed: bool = True) -> str:
        self.done += 1
        if processed:
            self.processed += 1
        width = len(str(self.total))
        elapsed = self.clock() - self.start
        text = f"[{self.done:>{width}}/{self.total}] {name}: {status}"
        if detail:
            text += f" ({detail})"
        return f"{text} | elapsed {format_duration(elapsed)} | ETA {format_duration(self.eta())}"
