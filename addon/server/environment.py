"""The server's private Python environment that Install Server makes, and the interpreter it is made from (bpy-free).

It lives in FaceForge's per-user data folder beside the models, never inside Blender's own Python,
so a Blender upgrade keeps it and ``faceforge model fetch`` typed by hand lands in the same place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SUPPORTED = ((3, 11), (3, 12), (3, 13))  # the server's requires-python, bounded by the Pythons torch ships wheels for
FOLDER = "server-python"                  # the environment, under the data folder
RECORD = "faceforge-install.json"         # written inside it once an install has been verified
LOG = "server-install.log"                # pip's whole output, under the data folder

_PROBE = ("import sys, venv\ntry:\n    import ensurepip\nexcept ImportError:\n    ensurepip = None\n"
          "print(sys.executable); print('%d.%d' % sys.version_info[:2]); print(int(ensurepip is not None))")


def user_data_dir(environ=os.environ, platform: str = sys.platform, home: str | None = None) -> Path:
    """$FACEFORGE_DATA, else ``platformdirs.user_data_dir("FaceForge")``: the server's own rule
    (inference_server.data_dir), written out because Blender's Python has no platformdirs."""
    if environ.get("FACEFORGE_DATA"):
        return Path(environ["FACEFORGE_DATA"])
    home_dir = Path(home or os.path.expanduser("~"))
    if platform == "win32":
        return Path(environ.get("LOCALAPPDATA") or home_dir / "AppData" / "Local") / "FaceForge" / "FaceForge"
    if platform == "darwin":
        return home_dir / "Library" / "Application Support" / "FaceForge"
    return Path(environ.get("XDG_DATA_HOME", "").strip() or home_dir / ".local" / "share") / "FaceForge"


def environment_dir(environ=os.environ) -> Path:
    return user_data_dir(environ) / FOLDER


def environment_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@dataclass(frozen=True)
class InstalledServer:
    """What a verified install recorded; Start Server and Download Head Model run ``python``."""

    python: str
    server_version: str
    torch: str
    device: str          # what the verifying server used: "cpu" or "cuda"
    source: str          # where pip took the packages from, in words
    installed_at: str

    def write(self, folder: Path) -> None:
        (folder / RECORD).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")


def installed(environ=os.environ) -> InstalledServer | None:
    """The verified install, or None (never installed, removed, half-installed or its interpreter gone)."""
    try:
        record = json.loads((environment_dir(environ) / RECORD).read_text(encoding="utf-8"))
        server = InstalledServer(**{name: str(record[name]) for name in InstalledServer.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if Path(server.python).is_file() else None


def forget(environ=os.environ) -> None:
    """Drop the record first, so an interrupted Remove or Update never leaves an install that looks usable."""
    (environment_dir(environ) / RECORD).unlink(missing_ok=True)


@dataclass(frozen=True)
class BasePython:
    path: str
    version: tuple


def probe(command: list, timeout: float = 30.0) -> BasePython | str:
    """The interpreter ``command`` runs, if it can make a virtual environment; else why not, in words."""
    try:
        result = subprocess.run([*command, "-c", _PROBE], capture_output=True, text=True, timeout=timeout,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{command[0]} did not run ({exc})"
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 3:
        return f"{' '.join(command)} has no venv module"
    path, version_text, has_ensurepip = lines
    version = tuple(int(part) for part in version_text.split("."))
    if version not in SUPPORTED:
        return f"{path} is Python {version_text}; the server needs 3.11, 3.12 or 3.13"
    if has_ensurepip != "1":
        return (f"{path} (Python {version_text}) cannot make environments: install its venv package "
                f"(Debian/Ubuntu: sudo apt install python{version_text}-venv)")
    return BasePython(path, version)


def candidates(environ=os.environ, platform: str = sys.platform, executable: str = sys.executable) -> list:
    """Commands that may run a suitable Python, most specific first: what is on PATH, the python.org,
    Homebrew and py-launcher installs, uv's managed Pythons, then Blender's own interpreter (4.1+ bundles 3.11;
    only the environment's base, nothing is installed into it)."""
    found: list = []
    path = environ.get("PATH", os.defpath)
    for name in ("python3.13", "python3.12", "python3.11", "python3", "python"):
        where = shutil.which(name, path=path)
        if where:
            found.append([where])
    if platform == "win32":
        if shutil.which("py", path=path):
            found += [["py", f"-{major}.{minor}"] for major, minor in reversed(SUPPORTED)]
        local = Path(environ.get("LOCALAPPDATA", "")) / "Programs" / "Python"
        found += [[str(local / f"Python{major}{minor}" / "python.exe")] for major, minor in reversed(SUPPORTED)]
    elif platform == "darwin":
        found += [[f"/Library/Frameworks/Python.framework/Versions/{major}.{minor}/bin/python3"]
                  for major, minor in reversed(SUPPORTED)]
        found += [["/opt/homebrew/bin/python3"], ["/usr/local/bin/python3"]]
    uv = shutil.which("uv", path=path)
    if uv:
        try:
            result = subprocess.run([uv, "python", "find", ">=3.11,<3.14"], capture_output=True, text=True,
                                    timeout=30)
            if result.returncode == 0 and result.stdout.strip():
                found.append([result.stdout.strip()])
        except (OSError, subprocess.SubprocessError):
            pass
    if executable and Path(executable).name.lower().startswith("python"):
        found.append([executable])
    return found


def find_base_python(explicit: str = "", prefer: tuple | None = None, **where) -> BasePython:
    """The interpreter the environment is made from: ``explicit`` (the preference), else the first
    candidate that fits, Python ``prefer`` (a wheel folder's version) first. ValueError says what to install."""
    if explicit:
        found = probe([explicit])
        if isinstance(found, str):
            raise ValueError(f"The Base Python in the preferences cannot be used: {found}")
        return found
    reasons, fits = [], []
    for command in candidates(**where):
        found = probe(command)
        if isinstance(found, str):
            reasons.append(found)
        elif found.path not in {fit.path for fit in fits}:
            fits.append(found)
    if fits:
        return sorted(fits, key=lambda fit: fit.version != prefer)[0]
    seen = "; ".join(dict.fromkeys(reasons)) or "none on PATH"
    raise ValueError("No Python 3.11-3.13 found to install the server with (" + seen + "). Install Python 3.12 "
                     "(Windows, macOS: python.org; Linux: your package manager, with its venv package), "
                     "or set Base Python in the add-on preferences")


def wheel_folder_python(folder: str) -> tuple | None:
    """The Python a wheel folder was made for (``cp311`` tags of its compiled wheels), or None."""
    tags = {match.group(1) for name in os.listdir(folder)
            if (match := re.search(r"-cp(3\d+)-cp\1-", name)) and name.endswith(".whl")} if os.path.isdir(folder) else set()
    return (3, int(next(iter(tags))[1:])) if len(tags) == 1 else None


def nvidia_driver_present() -> bool:
    """Whether a CUDA build of torch could run here (an NVIDIA driver answers)."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
