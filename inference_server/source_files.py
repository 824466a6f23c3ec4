"""Files the product opens on a user's say-so (a model to install, a checkpoint, a licence beside it).

Only a regular file of bounded size is read (or a folder, where a folder is meant): a device, a
pipe or a socket is refused before any read — reading ``/dev/zero`` never ends and opening a FIFO
blocks until someone writes — and so is a file larger than anything it could legitimately be.
"""
from __future__ import annotations

import stat
from pathlib import Path


def check_source(path: Path, max_bytes: int, error: type[Exception], what: str, folder_ok: bool = False) -> None:
    """Raise ``error(reason)`` unless ``path`` is a regular file of at most ``max_bytes`` (or a folder,
    with ``folder_ok``)."""
    try:
        info = Path(path).stat()
    except OSError:
        raise error(f"no {what} at {path}") from None
    if stat.S_ISDIR(info.st_mode):
        if folder_ok:
            return
        raise error(f"{path} is a folder, not a {what} file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is not a regular file (a device, pipe or socket): not a {what}")
    if info.st_size > max_bytes:
        raise error(f"{path} is {info.st_size / 1e6:.0f} MB, more than a {what} can be ({max_bytes / 1e6:.0f} MB)")


def read_small_text(path: Path, max_bytes: int = 1 << 20) -> str | None:
    """A short text file's contents if ``path`` is one, not a link (which could point at a file only
    its owner may read) and not something else; None otherwise."""
    path = Path(path)
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        return None
    return path.read_text(errors="replace")
