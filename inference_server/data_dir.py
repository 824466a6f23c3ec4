"""The one folder FaceForge keeps the user's models in: ``$FACEFORGE_DATA``, else the OS's per-user
data folder (platformdirs, e.g. ``~/.local/share/FaceForge``). Each model kind has a subfolder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import platformdirs


def data_dir() -> Path:
    return Path(os.environ.get("FACEFORGE_DATA") or platformdirs.user_data_dir("FaceForge"))


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary)`` beside ``path``, then rename: a crash or a full disk never leaves a
    truncated file under the real name, nor a partial one behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
