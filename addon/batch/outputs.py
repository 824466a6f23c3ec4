"""Folders out (bpy-free): output names, manifests and resume decisions, the staging folder a
photo's files are written into before they are moved into place, and the output folder's lock.

Output layout, per photo (``KEY`` is the photo's file stem, made unique within the run)::

    OUTPUT/KEY/KEY.blend            one object per face, modifiers kept, textures packed
    OUTPUT/KEY/KEY.glb              modifiers applied, texture embedded
    OUTPUT/KEY/KEY.obj + KEY.mtl    modifiers applied, MTL points at the PNGs
    OUTPUT/KEY/KEY.ply, KEY.stl     modifiers applied (STL in millimetres, closed for printing)
    OUTPUT/KEY/KEY_faceN.png        texture of face N
    OUTPUT/KEY/faceforge.json       manifest, written last: the photo is done
    OUTPUT/summary.json             this run: one entry per photo (``report.Summary``)

A photo's files are written into a hidden staging folder and moved into place at the end, so an
interrupted run never leaves half a photo under the final name; re-running skips photos whose
manifest lists every requested format and never replaces a file unless ``--overwrite`` is given.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .inputs import Photo

# Files each format produces besides textures (the OBJ exporter writes the MTL next to the OBJ).
FORMAT_FILES = {"blend": (".blend",), "glb": (".glb",), "fbx": (".fbx",), "obj": (".obj", ".mtl"), "ply": (".ply",),
                "stl": (".stl",)}
MANIFEST = "faceforge.json"
STAGING_PREFIX = ".faceforge-partial-"
LOCK = ".faceforge-batch.lock"  # the batch's own files start with "." and photos' output names never do


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


class OutputLock:
    """One batch per output folder: a second one would delete the first's staging folders as stale and
    write the same summary. An advisory lock on ``OUTPUT/.faceforge-batch.lock`` (``flock``; on Windows
    ``msvcrt.locking``), released by the system when the process ends, however it ends; the children of
    ``--workers`` write under their parent's lock."""

    def __init__(self, handle):
        self._handle = handle

    @classmethod
    def take(cls, output: Path) -> "OutputLock | None":
        """The lock, or None when another batch holds it. OSError when the folder cannot be written."""
        handle = open(output / LOCK, "a+b")
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return cls(handle)

    def release(self) -> None:
        self._handle.close()
