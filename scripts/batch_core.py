"""Bpy-free half of the headless batch (``scripts/batch.py``): arguments, photo discovery, output
layout, resume bookkeeping, the request window that keeps the server busy, progress/ETA and the
summary file.

Nothing here imports ``bpy`` (or ``zmq``: the client is passed in), so all of it is unit-tested with
plain pytest, and it loads the same way in Debian's Blender 3.4, in ``bpy`` from PyPI and in CPython.

Output layout, per photo (``KEY`` is the photo's file stem, made unique within the run)::

    OUTPUT/KEY/KEY.blend            one object per face, modifiers kept, textures packed
    OUTPUT/KEY/KEY.glb              modifiers applied, texture embedded
    OUTPUT/KEY/KEY.obj + KEY.mtl    modifiers applied, MTL points at the PNGs
    OUTPUT/KEY/KEY.ply, KEY.stl     modifiers applied (STL in millimetres, closed for printing)
    OUTPUT/KEY/KEY_faceN.png        texture of face N
    OUTPUT/KEY/faceforge.json       manifest, written last: the photo is done
    OUTPUT/summary.json             this run: one entry per photo

A photo's files are written into a hidden staging folder and moved into place at the end, so an
interrupted run never leaves half a photo under the final name; re-running skips photos whose
manifest lists every requested format and never replaces a file unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

FORMATS = ("blend", "glb", "obj", "ply", "stl")
DEFAULT_FORMATS = ("blend", "glb")
# Files each format produces besides textures (the OBJ exporter writes the MTL next to the OBJ).
FORMAT_FILES = {"blend": (".blend",), "glb": (".glb",), "obj": (".obj", ".mtl"), "ply": (".ply",), "stl": (".stl",)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST = "faceforge.json"
SUMMARY = "summary.json"
STAGING_PREFIX = ".faceforge-partial-"

EXIT_OK = 0            # every photo done (or already done)
EXIT_PHOTOS_FAILED = 1  # the batch ran; at least one photo failed (see the summary)
EXIT_USAGE = 2          # bad command line
EXIT_SERVER = 3         # no server: could not start or reach it; nothing (more) was processed
EXIT_SETUP = 4          # this Python lacks numpy or pyzmq (Debian: apt-get install python3-numpy python3-zmq)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; the summary lists what was done

# Error codes the batch itself reports, next to the server's (protocol.ErrorCode values).
ERR_UNREADABLE = "unreadable"
ERR_EXISTS = "exists"
ERR_BUILD = "build_failed"
ERR_EXPORT = "export_failed"
ERR_SERVER_GONE = "server_gone"


# ----------------------------------------------------------------------------------------------
# Command line

@dataclass
class Options:
    inputs: list
    output: Path
    server: str | None = None
    start_server: bool = False
    face: str = "largest"
    formats: tuple = DEFAULT_FORMATS
    resolution: int | None = None
    smooth: int | None = None
    smooth_factor: float | None = None
    subdivision: int | None = None
    detail: float | None = None
    overwrite: bool = False
    jobs: int = 2
    recursive: bool = False
    timeout: float = 300.0
    server_timeout: float = 180.0
    device: str = "auto"
    python: str | None = None
    summary: Path | None = None
    verbose: bool = False

    @property
    def summary_path(self) -> Path:
        return self.summary or self.output / SUMMARY

    def request_params(self) -> dict:
        """Options sent with every reconstruct request."""
        params = {"face": self.face}
        if self.resolution is not None:
            params["resolution"] = self.resolution
        return params

    def build_settings(self) -> dict:
        """Keyword arguments for ``addon.scene.BuildSettings`` (only the ones given)."""
        values = {"smooth_iterations": self.smooth, "smooth_factor": self.smooth_factor,
                  "subdivision_levels": self.subdivision, "detail_strength": self.detail}
        return {k: v for k, v in values.items() if v is not None}


def script_argv(argv: Sequence[str]) -> list:
    """The script's own arguments: everything after ``--`` (Blender passes its own before it).

    ``python scripts/batch.py --input ...`` (no ``--``) works too.
    """
    argv = list(argv)
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def _face_choice(value: str) -> str:
    value = value.strip().lower()
    if value in ("largest", "all") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(f"must be 'largest', 'all' or a face index (0 = largest), not {value!r}")


def parse_formats(value: str) -> tuple:
    names = [v.strip().lower().lstrip(".") for v in value.split(",") if v.strip()]
    names = ["glb" if n in ("gltf", "glb") else n for n in names]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {','.join(FORMATS)}")
    return tuple(dict.fromkeys(names))  # keep order, drop repeats


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blender -b --python-exit-code 1 -P scripts/batch.py --",
        description="Reconstruct 3D faces from photos and write .blend / .glb / .obj / .ply / .stl files.",
        epilog=f"Exit status: {EXIT_OK} all photos done; {EXIT_PHOTOS_FAILED} some photos failed (see the summary); "
               f"{EXIT_USAGE} bad arguments; {EXIT_SERVER} no server; {EXIT_SETUP} numpy/pyzmq missing; "
               f"{EXIT_INTERRUPTED} interrupted.")
    parser.add_argument("--input", "-i", dest="inputs", action="extend", nargs="+", required=True, type=Path,
                        metavar="PHOTO_OR_DIR", help="photos and/or folders of photos (repeatable)")
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="ADDR", help="use a running server (e.g. tcp://127.0.0.1:5555)")
    where.add_argument("--start-server", action="store_true",
                       help="start a local server for this run and stop it at the end (the default without --server)")
    parser.add_argument("--face", type=_face_choice, default="largest", help="largest | all | N (default largest)")
    parser.add_argument("--formats", type=parse_formats, default=DEFAULT_FORMATS,
                        help=f"comma-separated, from {','.join(FORMATS)} (default {','.join(DEFAULT_FORMATS)})")
    parser.add_argument("--resolution", type=_positive_int, help="mesh grid cells across the face (server default 100)")
    parser.add_argument("--smooth", type=_non_negative_int, help="smooth-modifier iterations (add-on default)")
    parser.add_argument("--smooth-factor", type=float, help="smooth-modifier factor (add-on default)")
    parser.add_argument("--subdivision", type=_non_negative_int, help="subdivision levels (add-on default)")
    parser.add_argument("--detail", type=float, help="displacement strength of the detail map in metres (add-on default)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip done photos)")
    parser.add_argument("--jobs", "-j", type=_positive_int, default=2,
                        help="requests kept in flight so the server works while Blender writes files (default 2)")
    parser.add_argument("--recursive", "-r", action="store_true", help="also look for photos in sub-folders")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may take once the server gets to it (default 300)")
    parser.add_argument("--server-timeout", type=float, default=180.0,
                        help="seconds to wait for a started server to load its models (default 180)")
    parser.add_argument("--device", default="auto", help="device of a started server: auto | cpu | cuda (default auto)")
    parser.add_argument("--python", help="interpreter for a started server (default: $FACEFORGE_PYTHON, the repo's .venv, "
                                         "or this Python if it has torch)")
    parser.add_argument("--summary", type=Path, help=f"summary JSON path (default OUTPUT/{SUMMARY})")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="leave Blender's own messages on stdout (default: they go to stderr)")
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the script's arguments (already split off with ``script_argv``). Exits 2 on errors."""
    ns = build_parser().parse_args(list(argv))
    values = vars(ns)
    values["output"] = Path(os.path.abspath(values["output"]))  # Blender's operators want absolute paths
    if values["summary"] is not None:
        values["summary"] = Path(os.path.abspath(values["summary"]))
    return Options(**values)


# ----------------------------------------------------------------------------------------------
# Photos

@dataclass
class Photo:
    path: Path        # as found (absolute)
    key: str          # unique output name within the run

    @property
    def name(self) -> str:
        return self.path.name


def _is_photo_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def discover(inputs: Iterable[Path], *, output: Path | None = None, recursive: bool = False) -> tuple[list, list]:
    """Photos from files and folders, in a stable order, without duplicates.

    Files named explicitly are taken whatever their suffix (the server decides whether they are
    images); folders contribute files with an image suffix, skipping hidden ones and the output
    folder. Returns ``(photos, missing)`` where ``missing`` lists inputs that do not exist.
    """
    seen, paths, missing = set(), [], []
    out = output.resolve() if output is not None else None

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            paths.append(path.absolute())

    for item in inputs:
        item = Path(item)
        if item.is_dir():
            walker = item.rglob("*") if recursive else item.iterdir()
            found = []
            for path in walker:
                try:
                    rel = path.relative_to(item)
                except ValueError:
                    rel = Path(path.name)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if out is not None and (path.resolve() == out or out in path.resolve().parents):
                    continue
                if _is_photo_name(path) and not path.is_dir():
                    found.append(path)
            for path in sorted(found, key=lambda p: str(p).lower()):
                add(path)
        elif item.exists() or item.is_symlink():
            add(item)
        else:
            missing.append(item)
    keys = assign_keys(paths)
    return [Photo(path=p, key=k) for p, k in zip(paths, keys)], missing


def _safe(name: str) -> str:
    cleaned = "".join(c if (c.isalnum() or c in "-_.+@ ") else "_" for c in name).strip(" .")
    return cleaned or "photo"


def assign_keys(paths: Sequence[Path]) -> list:
    """Unique, file-system-safe output names: the stem, then stem_ext, then parent_stem_ext, then a number."""
    keys: list = []
    used: set = set()
    stems = [_safe(p.stem) for p in paths]
    counts: dict = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    for path, stem in zip(paths, stems):
        candidates = [stem] if counts[stem.lower()] == 1 else []
        ext = path.suffix.lower().lstrip(".")
        candidates += [f"{stem}_{ext}" if ext else stem, _safe(f"{path.parent.name}_{stem}_{ext}")]
        key = next((c for c in candidates if c.lower() not in used), None)
        n = 2
        while key is None:
            candidate = f"{candidates[-1]}-{n}"
            key = candidate if candidate.lower() not in used else None
            n += 1
        used.add(key.lower())
        keys.append(key)
    return keys


# ----------------------------------------------------------------------------------------------
# Output folders, manifests, resume

def photo_dir(output: Path, photo: Photo) -> Path:
    return output / photo.key


def output_names(key: str, formats: Sequence[str]) -> list:
    return [key + suffix for fmt in formats for suffix in FORMAT_FILES[fmt]]


def texture_name(key: str, face_index: int) -> str:
    return f"{key}_face{face_index}.png"


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Decision:
    action: str           # "run" | "skip" | "conflict"
    reason: str = ""
    manifest: dict | None = None
    missing_formats: tuple = ()


def decide(output: Path, photo: Photo, formats: Sequence[str], overwrite: bool) -> Decision:
    """Whether to process a photo: skip it when its manifest already covers every requested format
    and the files exist; run it when nothing is there (or with --overwrite); otherwise add only
    the missing formats, never replacing a file that is there."""
    folder = photo_dir(output, photo)
    if overwrite or not folder.exists():
        return Decision("run", "overwrite" if overwrite and folder.exists() else "new", missing_formats=tuple(formats))
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("status") != "ok":
        # Not ours or not finished: leave it alone.
        return Decision("conflict", f"{folder} exists but holds no finished FaceForge output; "
                                    f"pass --overwrite to replace it")
    done = set(manifest.get("formats", []))
    missing = tuple(f for f in formats if f not in done or
                    not all((folder / name).exists() for name in output_names(photo.key, [f])))
    if not missing:
        return Decision("skip", "already done", manifest=manifest)
    return Decision("run", "add formats " + ",".join(missing), manifest=manifest, missing_formats=missing)


def make_staging(output: Path, photo: Photo) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{photo.key}-", dir=output))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; the final folder should look like any other
    return staging


def clean_stale_staging(output: Path, max_age_s: float = 0.0) -> list:
    """Remove staging folders left by an interrupted run (only ours: named with STAGING_PREFIX)."""
    removed = []
    if not output.is_dir():
        return removed
    now = time.time()
    for path in output.iterdir():
        if path.is_dir() and path.name.startswith(STAGING_PREFIX):
            try:
                if now - path.stat().st_mtime >= max_age_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            except OSError:
                pass
    return removed


def commit(staging: Path, final: Path, *, overwrite: bool, manifest: dict) -> list:
    """Move a finished photo's files into place and write its manifest last. Returns final paths.

    New folder: one atomic rename. Existing folder: with ``overwrite`` it is replaced (renamed
    aside, then deleted); without, only files that are not there yet are moved in.
    """
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if not final.exists():
        os.replace(staging, final)
    elif overwrite:
        trash = final.with_name(f"{STAGING_PREFIX}old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        old = read_manifest(final) or {}
        for path in staging.iterdir():
            if path.name != MANIFEST and not (final / path.name).exists():
                os.replace(path, final / path.name)
        merged = dict(manifest)
        merged["formats"] = list(dict.fromkeys(list(old.get("formats", [])) + list(manifest.get("formats", []))))
        merged["files"] = sorted(set(old.get("files", [])) | set(manifest.get("files", [])))
        tmp = final / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(merged, indent=2), encoding="utf-8")
        os.replace(tmp, final / MANIFEST)
        shutil.rmtree(staging, ignore_errors=True)
        manifest = merged
    return [final / name for name in manifest.get("files", [])]


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

    def __init__(self, path: Path, options: Options, started: float | None = None):
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
        o = self.options
        return {
            "faceforge_batch": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "elapsed_s": round(time.time() - self.started, 3),
            "finished": self.finished,
            "options": {"inputs": [str(p) for p in o.inputs], "output": str(o.output), "face": o.face,
                        "formats": list(o.formats), "request": o.request_params(), "build": o.build_settings(),
                        "jobs": o.jobs, "overwrite": o.overwrite, "server": o.server},
            "run": self.run,
            "counts": self.counts(),
            "photos": [asdict(r) for r in self.reports],
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, self.path)


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


# ----------------------------------------------------------------------------------------------
# The request window: N requests in flight on one client

@dataclass
class InFlight:
    photo: Photo
    request_id: str
    sent: float


class Window:
    """Keeps up to ``jobs`` photos in the pipeline on one client -- requests in flight at the server
    plus the one the caller is building in Blender -- and yields replies in the order they arrive.

    ``jobs=1`` is strictly serial (send, wait, build, send the next). With ``jobs=N`` the next
    requests are already queued at the server while the caller builds and exports a reply, so the
    server is never idle while Blender writes files. The refill happens *before* a reply is handed
    to the caller.

    ``client`` needs ``send(op, params, payloads) -> id`` and ``receive(timeout) -> message`` with
    ``message.id`` and ``message.error`` (``addon.wire.client.Client``). ``read`` returns a photo's
    bytes or raises OSError. ``timeout`` bounds how long the server may work on the oldest request
    *after* finishing the one before (requests queued behind others are not penalised for waiting).
    ``alive`` is polled while waiting; when it turns false the remaining photos fail at once.

    ``events()`` yields ``(photo, message, error)``: a reply message (possibly an error reply), or
    ``error`` as ``(code, text)`` for photos that never got a reply (unreadable, timeout, no server).
    """

    BUSY_CODE = "busy"

    def __init__(self, client, photos: Sequence[Photo], params: dict, *, jobs: int, timeout: float,
                 read: Callable[[Path], bytes] = lambda p: p.read_bytes(),
                 alive: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 unreachable_codes: Sequence[str] = ("unreachable",), busy_retries: int = 50, busy_delay: float = 0.5):
        self.client = client
        self.pending = list(photos)
        self.params = dict(params)
        self.jobs = max(1, int(jobs))
        self.timeout = float(timeout)
        self.read = read
        self.alive = alive
        self.clock = clock
        self.sleep = sleep
        self.unreachable_codes = tuple(unreachable_codes)
        self.busy_retries = busy_retries
        self.busy_delay = busy_delay
        self.attempts: dict = {}        # photo key -> sends so far
        self.in_flight: dict = {}       # request id -> InFlight, in send order
        self.last_progress = clock()
        self.max_in_flight = 0
        self.aborted: tuple | None = None  # (code, text) once the server is unreachable/gone

    def _send(self, photo: Photo) -> None:
        data = self.read(photo.path)
        request_id = self.client.send("reconstruct", self.params, {"image": data})
        if not self.in_flight:
            self.last_progress = self.clock()
        self.attempts[photo.key] = self.attempts.get(photo.key, 0) + 1
        self.in_flight[request_id] = InFlight(photo, request_id, self.clock())
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))

    def fill(self, capacity: int) -> list:
        """Send until ``capacity`` requests are in flight. Returns immediate failures as events."""
        failures = []
        while self.pending and len(self.in_flight) < capacity and self.aborted is None:
            photo = self.pending.pop(0)
            try:
                self._send(photo)
            except OSError as exc:
                failures.append((photo, None, (ERR_UNREADABLE, f"cannot read {photo.path}: {exc.strerror or exc}")))
            except Exception as exc:  # ProtocolError(unreachable) and friends
                code = getattr(exc, "code", "internal")
                text = getattr(exc, "message", str(exc))
                failures.append((photo, None, (code, text)))
                if code in self.unreachable_codes:
                    self.aborted = (code, text)
        return failures

    def _abort_all(self, code: str, text: str) -> list:
        self.aborted = (code, text)
        lost = [(f.photo, None, (code, text)) for f in self.in_flight.values()]
        lost += [(p, None, (code, text)) for p in self.pending]
        self.in_flight.clear()
        self.pending.clear()
        return lost

    def events(self):
        while True:
            yield from self.fill(self.jobs)
            if self.aborted is not None:
                yield from self._abort_all(*self.aborted)
                return
            if not self.in_flight:
                return
            oldest = next(iter(self.in_flight.values()))
            start = max(self.last_progress, oldest.sent)
            remaining = start + self.timeout - self.clock()
            if remaining <= 0:
                del self.in_flight[oldest.request_id]
                self.last_progress = self.clock()
                yield oldest.photo, None, ("timeout", f"no reply within {self.timeout:g} s")
                continue
            try:
                message = self.client.receive(min(remaining, 1.0))
            except Exception as exc:
                code = getattr(exc, "code", "internal")
                if code == "timeout":          # a 1-second slice passed: check the server, loop
                    if not self.alive():
                        yield from self._abort_all(ERR_SERVER_GONE, "the server process exited")
                        return
                    continue
                # A reply that does not decode: we cannot tell whose it was; fail the oldest.
                del self.in_flight[oldest.request_id]
                yield oldest.photo, None, (code, getattr(exc, "message", str(exc)))
                continue
            entry = self.in_flight.pop(message.id, None)
            if entry is None:
                if message.id == "" and self.in_flight:   # id-less error: the server could not parse ours
                    entry = self.in_flight.pop(oldest.request_id)
                else:
                    continue                               # late reply to a timed-out request
            self.last_progress = self.clock()
            error = getattr(message, "error", None)
            if (error is not None and getattr(error, "code", "") == self.BUSY_CODE
                    and self.attempts.get(entry.photo.key, 0) < self.busy_retries):
                self.pending.insert(0, entry.photo)        # server queue full (shared server): retry
                if not self.in_flight:
                    self.sleep(self.busy_delay)
                continue
            # Refill first (the caller's photo takes one slot): the server starts the next photo
            # while the caller builds and exports this one.
            yield from self.fill(self.jobs - 1)
            yield entry.photo, message, None


# ----------------------------------------------------------------------------------------------
# Local server helpers

def missing_modules(names: Sequence[str] = ("numpy", "zmq")) -> list:
    """Modules the batch needs that this Python cannot import (Blender's bundled or the system's)."""
    import importlib

    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def setup_hint(missing: Sequence[str], executable: str = sys.executable) -> str:
    packages = {"numpy": "python3-numpy", "zmq": "python3-zmq"}
    pip = {"numpy": "numpy", "zmq": "pyzmq"}
    return (f"error: this Python ({executable}, {sys.version.split()[0]}) cannot import {', '.join(missing)}. "
            f"Debian/Ubuntu Blender: apt-get install {' '.join(packages[m] for m in missing)}; "
            f"other Pythons: pip install {' '.join(pip[m] for m in missing)}")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def can_import_torch(python: str, timeout: float = 60.0) -> bool:
    try:
        return subprocess.run([python, "-c", "import torch"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pick_server_python(explicit: str | None = None, *, env: dict | None = None, root: Path | None = None,
                       executable: str | None = None, has_torch: Callable[[str], bool] = can_import_torch) -> str | None:
    """``--python``, else $FACEFORGE_PYTHON, else ROOT/.venv/bin/python (Scripts/python.exe on
    Windows), else this interpreter if it can import torch. ``None`` when nothing fits."""
    env = os.environ if env is None else env
    root = repo_root() if root is None else root
    if explicit:
        return explicit
    if env.get("FACEFORGE_PYTHON"):
        return env["FACEFORGE_PYTHON"]
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return str(candidate)
    executable = sys.executable if executable is None else executable
    if executable and Path(executable).name.lower().startswith("python") and has_torch(executable):
        return executable
    return None


def free_tcp_address(host: str = "127.0.0.1") -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return f"tcp://{host}:{sock.getsockname()[1]}"


# ----------------------------------------------------------------------------------------------
# Files

def png_bytes(rgb) -> bytes:
    """Encode an (H, W, 3) or (H, W, 4) uint8 array (row 0 = top) as PNG, with zlib only: Debian's
    Blender Python has no Pillow, and Blender's own image saving goes through colour management."""
    import struct
    import zlib

    import numpy as np

    pixels = np.ascontiguousarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"expected (H, W, 3|4) uint8 pixels, got {pixels.shape}")
    height, width, channels = pixels.shape
    rows = np.empty((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "None" per scanline
    rows[:, 1:] = pixels.reshape(height, width * channels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    color_type = 2 if channels == 3 else 6
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def read_glb(path: Path) -> tuple[dict, bytes]:
    """Parse a binary glTF: ``(json, bin_chunk)``. Raises ValueError on a malformed file."""
    import struct

    data = Path(path).read_bytes()
    if len(data) < 20:
        raise ValueError("file too short for GLB")
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2 or length != len(data):
        raise ValueError(f"bad GLB header: magic={magic!r} version={version} length={length} (file {len(data)})")
    offset, document, binary = 12, None, b""
    while offset < length:
        chunk_length, chunk_type = struct.unpack_from("<I4s", data, offset)
        body = data[offset + 8: offset + 8 + chunk_length]
        if chunk_type == b"JSON":
            document = json.loads(body.decode("utf-8"))
        elif chunk_type == b"BIN\x00":
            binary = body
        offset += 8 + chunk_length
    if document is None:
        raise ValueError("GLB has no JSON chunk")
    return document, binary
