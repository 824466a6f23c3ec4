"""Make an offline install bundle: one folder with the faceforge wheel and every wheel the server needs.

Run it where there is internet, copy the folder to the air-gapped workstation, then in Blender:
Preferences > Add-ons > FaceForge > Wheel Folder = that folder, Install Server. (Or by hand:
``python -m venv env && env/bin/pip install --no-index --find-links FOLDER faceforge``.)

    python scripts/server_bundle.py FOLDER [--cuda] [--torch-index URL|none]
                                    [--python-version 3.11 --platform win_amd64]

The bundle is for one Python version and one system: this interpreter's unless ``--python-version``
and ``--platform`` name another (pip then takes wheels only). Re-running into the same folder only
fetches what is missing and replaces the faceforge wheel.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from build_extension import server_wheel  # scripts/ is on the path when this runs as a script
TORCH_INDEX = "https://download.pytorch.org/whl/"


def torch_index(cuda: bool, platform: str) -> str:
    """PyTorch's own index where PyPI's default torch is not the wanted build (see addon/server/installer.py)."""
    if cuda:
        return TORCH_INDEX + "cu128" if platform.startswith("win") else ""
    return "" if platform.startswith("mac") or platform == "darwin" else TORCH_INDEX + "cpu"


def make_bundle(folder: Path, *, cuda: bool = False, index: str | None = None, python_version: str = "",
                platform: str = "") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("faceforge-*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as scratch:
        wheel = folder / server_wheel(Path(scratch)).name
        shutil.move(Path(scratch) / wheel.name, wheel)
    target = (["--python-version", python_version, "--platform", platform, "--only-binary=:all:"]
              if python_version or platform else ["--only-binary=:all:"])
    index = torch_index(cuda, platform or sys.platform) if index is None else ("" if index == "none" else index)
    subprocess.run([*pip, "download", str(wheel), "pip", "--dest", str(folder), *target,
                    *(["--extra-index-url", index] if index else [])], check=True)
    return sorted(folder.glob("*.whl"))


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the wheels go")
    parser.add_argument("--cuda", action="store_true", help="the CUDA build of torch (default: CPU)")
    parser.add_argument("--torch-index", default=None,
                        help="index of torch builds (default: PyTorch's CPU index on Linux and Windows; none: "
                             "only the configured index)")
    parser.add_argument("--python-version", default="", help="for another Python, e.g. 3.12")
    parser.add_argument("--platform", default="", help="for another system: a wheel platform tag, e.g. win_amd64")
    args = parser.parse_args(argv)
    try:
        wheels = make_bundle(args.folder, cuda=args.cuda, index=args.torch_index,
                             python_version=args.python_version, platform=args.platform)
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(exc.cmd[2:4])} failed with exit code {exc.returncode} (pip's output is above)",
              file=sys.stderr)
        return 1
    size = sum(wheel.stat().st_size for wheel in wheels) / 1e9
    print(f"{len(wheels)} wheels, {size:.2f} GB in {args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
