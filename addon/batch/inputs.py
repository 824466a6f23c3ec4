"""Photos in (bpy-free): which folder entries are photos (or videos of one person: one animated head
each), their output names, how they are read, and how their names are shown.

A folder may hold anything: FIFOs and devices (a read would block or never end), links that loop
or point nowhere, files of gigabytes, names that are not UTF-8 or hold a newline. Only regular files
of at most ``MAX_PHOTO_BYTES`` are photos; every other entry with a photo's name is reported and
skipped, never read. ``read_photo`` checks again on the open file (the folder may change between
finding and reading), and ``shown`` keeps every name on one printable line.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
MAX_PHOTO_BYTES = 256 * 1024 * 1024  # the server's default --max-message-mb: a larger photo could not be sent


@dataclass
class Photo:
    path: Path        # as found (absolute); with ``members``, the person's folder
    key: str          # unique output name within the run
    members: tuple = ()  # --same-person: the photos of one person (one head fitted to all), in name order

    @property
    def name(self) -> str:
        """The file name, escaped for one line of output (``shown``)."""
        return shown(self.path.name)

    @property
    def is_video(self) -> bool:
        """A video file (by its suffix): sent as a request's ``video`` frame, not as a photo."""
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def shown(text: str) -> str:
    """``text`` on one printable line: control characters and undecodable bytes (surrogate escapes of a
    non-UTF-8 file name) written as Python escapes, so a name cannot break the one-line-per-photo output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _is_photo_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES and not path.name.startswith(".")


def why_not_a_photo(path: Path, max_bytes: int = MAX_PHOTO_BYTES) -> str | None:
    """Why ``path`` cannot be read as a photo (None: it can): missing, a link that loops or dangles,
    not a regular file, or too large. Follows links; never opens the file."""
    try:
        info = path.stat()
    except OSError as exc:
        if path.is_symlink():
            return "is a link that loops or points nowhere"
        return "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a folder, FIFO, device or socket)"
    if info.st_size > max_bytes:
        return f"is {info.st_size:,} bytes, over the batch's limit of {max_bytes / 2 ** 20:g} MB per photo"
    return None


def read_photo(path: Path, max_bytes: int = MAX_PHOTO_BYTES) -> bytes:
    """The file's bytes, or OSError saying why not. Opened without blocking (a FIFO put in its place
    since discovery does not hang the run) and checked on the open descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{shown(path)} is not a regular file (a folder, FIFO, device or socket)")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{shown(path)} is over the batch's limit of {max_bytes / 2 ** 20:g} MB per photo")
    return data


def discover(inputs: Iterable[Path], *, output: Path | None = None, recursive: bool = False,
             reserved: Sequence[str] = ()) -> tuple[list, list]:
    """Photos from files and folders, in a stable order, without duplicates.

    Files named explicitly are taken whatever their suffix (the server decides whether they are
    images); folders contribute entries with an image suffix, skipping hidden ones and the output
    folder. Returns ``(photos, refused)``: ``refused`` holds ``(path, reason)`` for each input or
    photo-named entry that cannot be read as a photo (``why_not_a_photo``). ``reserved``: output
    names the batch uses itself (``assign_keys``).
    """
    seen, paths, refused = set(), [], []
    out = os.path.realpath(output) if output is not None else None

    def add(path: Path) -> None:
        problem = why_not_a_photo(path)
        if problem is not None:
            refused.append((path.absolute(), problem))
            return
        resolved = os.path.realpath(path)  # never raises, unlike Path.resolve on a link loop
        if resolved not in seen:
            seen.add(resolved)
            paths.append(path.absolute())

    for item in inputs:
        item = Path(item)
        if item.is_dir():
            for path in sorted(_entries(item, out, recursive), key=lambda p: str(p).lower()):
                add(path)
        else:
            add(item)
    keys = assign_keys(paths, reserved)
    return [Photo(path=p, key=k) for p, k in zip(paths, keys)], refused


def discover_people(inputs: Iterable[Path], *, output: Path | None = None,
                    reserved: Sequence[str] = ()) -> tuple[list, list]:
    """``--same-person``: every sub-folder of an input folder is one person, whose photos (not videos)
    make one head; photos loose in an input folder, and files named explicitly, are one person each.
    Returns ``(people, refused)`` as ``discover`` does; a person's key is its folder's name."""
    out = os.path.realpath(output) if output is not None else None
    singles, people, refused = [], [], []
    for item in map(Path, inputs):
        if not item.is_dir():
            singles.append(item)
            continue
        found, bad = discover([item], output=output)
        singles += [photo.path for photo in found]
        refused += bad
        folders = sorted((entry for entry in item.iterdir() if entry.is_dir() and not entry.name.startswith(".")
                          and os.path.realpath(entry) != out), key=lambda p: str(p).lower())
        for folder in folders:
            members, bad = discover([folder], output=output)
            refused += bad
            members = tuple(photo.path for photo in members if not photo.is_video)
            if members:
                people.append((folder.absolute(), members))
    alone, bad = discover(singles, output=output)
    refused += bad
    paths = [path for path, _ in people] + [photo.path for photo in alone]
    keys = assign_keys(paths, reserved)
    return ([Photo(path, key, members) for (path, members), key in zip(people, keys)]
            + [Photo(photo.path, key) for photo, key in zip(alone, keys[len(people):])]), refused


def _entries(folder: Path, output: str | None, recursive: bool) -> list:
    """Photo-named entries of ``folder`` (not hidden, not in the output folder, not folders)."""
    found = []
    for path in (folder.rglob("*") if recursive else folder.iterdir()):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not _is_photo_name(path):
            continue
        real = os.path.realpath(path)
        if output is not None and (real == output or real.startswith(output + os.sep)):
            continue
        if not path.is_dir():
            found.append(path)
    return found


def _safe(name: str) -> str:
    cleaned = "".join(c if (c.isalnum() or c in "-_.+@ ") else "_" for c in name).strip(" .")
    return cleaned or "photo"


def assign_keys(paths: Sequence[Path], reserved: Sequence[str] = ()) -> list:
    """Unique, file-system-safe output names: the stem, then stem_ext, then parent_stem_ext, then a number.
    Never one of ``reserved`` (the batch's own files, e.g. ``summary.json``), compared without case."""
    keys: list = []
    used: set = {name.lower() for name in reserved}
    stems = [_safe(p.stem) for p in paths]
    counts: dict = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    for path, stem in zip(paths, stems):
        candidates = [stem] if counts[stem.lower()] == 1 else []
        ext = path.suffix.lower().lstrip(".")
        candidates += [_safe(f"{stem}_{ext}") if ext else stem, _safe(f"{path.parent.name}_{stem}_{ext}")]
        key = next((c for c in candidates if c.lower() not in used), None)
        n = 2
        while key is None:
            candidate = f"{candidates[-1]}-{n}"
            key = candidate if candidate.lower() not in used else None
            n += 1
        used.add(key.lower())
        keys.append(key)
    return keys
