"""Reading ``.pt`` files that may come from anyone: one place that opens them safely.

Only a regular file of bounded size is opened (a FIFO, a device or a folder named ``x.pt`` is
refused before any read), and ``torch.load`` runs with ``weights_only=True``, so no pickled code
runs. Failures become one sentence for the caller's error type; torch's own advice to load an
untrusted file with ``weights_only=False`` is never passed on.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .source_files import check_source


def load_tensors(path: Path, max_bytes: int, error: type[Exception], what: str = "checkpoint"):
    """The file's contents (tensors, dicts, lists, numbers, strings), or ``error(reason)``."""
    path = Path(path)
    check_source(path, max_bytes, error, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip damage, truncation, pickled code refused by weights_only, ...
        raise error(f"{path} is not a readable {what} ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds pickled Python objects other than tensors; they were not run"
    return f"{type(exc).__name__}: {text.splitlines()[0][:160] if text else 'empty'}"
