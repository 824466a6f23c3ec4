"""pyzmq for the legacy add-on zip (Blender 3.6-4.1): the one Blender's Python has, else the one bundled for it.

An extension (Blender 4.2+) declares pyzmq wheels in its manifest and Blender installs them. A
legacy add-on cannot declare wheels, so ``scripts/build_extension.py`` unpacks them into
``_pyzmq/<python>-<platform>/`` and ``ensure_pyzmq`` puts the matching folder on ``sys.path``.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parent.parent / "_pyzmq"  # the package root: faceforge/_pyzmq


def _platform_key(system: str, machine: str) -> str:
    machine = machine.lower()
    if system.startswith("linux"):
        return f"linux_{machine}"
    if system == "win32":
        return "win_amd64" if machine in ("amd64", "x86_64") else f"win_{machine}"
    if system == "darwin":
        return "macos"  # one universal2 wheel serves arm64 and x64
    return f"{system}_{machine}"


def running_key() -> str:
    """The bundle folder this Python needs, e.g. ``cp310-linux_x86_64``."""
    return f"cp{sys.version_info[0]}{sys.version_info[1]}-{_platform_key(sys.platform, platform.machine())}"


def wheel_key(filename: str) -> str:
    """The bundle folder of a wheel file, e.g. ``pyzmq-27.3.0-cp310-cp310-win_amd64.whl`` -> ``cp310-win_amd64``."""
    python, tags = filename[:-len(".whl")].split("-")[2::2]
    tag = tags.split(".")[0]
    if tag.startswith("manylinux"):
        return f"{python}-{_platform_key('linux', tag.split('_', 3)[3])}"
    if tag.startswith("macosx"):
        return f"{python}-{_platform_key('darwin', '')}"
    return f"{python}-{_platform_key('win32', tag.removeprefix('win_'))}"


def ensure_pyzmq() -> None:
    """Import zmq, from the bundle if Blender's Python has none; ImportError naming what is missing otherwise."""
    try:
        import zmq  # noqa: F401
        return
    except ImportError:
        pass
    folder = BUNDLE_DIR / running_key()
    if not folder.is_dir():
        bundled = sorted(p.name for p in BUNDLE_DIR.glob("*")) if BUNDLE_DIR.is_dir() else []
        raise ImportError(f"FaceForge needs pyzmq: this Python has none and no bundled copy matches {running_key()} "
                          f"(bundled: {', '.join(bundled) or 'none'}). Use the extension on Blender 4.2+, or "
                          "install pyzmq into Blender's Python.")
    sys.path.insert(0, str(folder))
    import zmq  # noqa: F401,F811
