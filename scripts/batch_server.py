"""The Pythons of a batch run (bpy-free): whether the one running the batch has numpy and pyzmq,
which one runs a started inference server, and a free address for that server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence


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

