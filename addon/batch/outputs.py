"""Photos in, folders out (bpy-free): photo discovery, output names, manifests and resume decisions,
and the staging folder a photo's files are written into before they are moved into place.

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
from typing import Iterable, Sequence

# Files each format produces besides textures (the OBJ exporter writes the MTL next to the OBJ).
FORMAT_FILES = {"blend": (".blend",), "glb": (".glb",), "fbx": (".fbx",), "obj": (".obj", ".mtl"), "ply": (".ply",),
                "stl": (".stl",)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST = "faceforge.json"
STAGING_PREFIX = ".faceforge-partial-"


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
