"""Command line of the headless batch (``scripts/batch.py``): the options, argument parsing, formats
and exit statuses. Bpy-free and numpy-free, so ``--help`` and usage errors work in any Python."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FORMATS = ("blend", "glb", "obj", "ply", "stl")
DEFAULT_FORMATS = ("blend", "glb")
SUMMARY = "summary.json"

EXIT_OK = 0            # every photo done (or already done)
EXIT_PHOTOS_FAILED = 1  # the batch ran; at least one photo failed (see the summary)
EXIT_USAGE = 2          # bad command line
EXIT_SERVER = 3         # no server: could not start or reach it; nothing (more) was processed
EXIT_SETUP = 4          # this Python lacks numpy or pyzmq (Debian: apt-get install python3-numpy python3-zmq)
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM; the summary lists what was done


# ----------------------------------------------------------------------------------------------
# Command line

@dataclass
class Options:
    inputs: list
    output: Path
    server: str | None = None
    start_server: bool = False
    face: str = "largest"
    formats: tuple = DEFAULT_FORMATS
    resolution: int | None = None
    smooth: int | None = None
    smooth_factor: float | None = None
    subdivision: int | None = None
    detail: float | None = None
    overwrite: bool = False
    jobs: int = 2
    recursive: bool = False
    timeout: float = 300.0
    server_timeout: float = 180.0
    device: str = "auto"
    python: str | None = None
    summary: Path | None = None
    verbose: bool = False

    @property
    def summary_path(self) -> Path:
        return self.summary or self.output / SUMMARY

    def request_params(self) -> dict:
        """Options sent with every reconstruct request."""
        params = {"face": self.face}
        if self.resolution is not None:
            params["resolution"] = self.resolution
        return params

    def build_settings(self) -> dict:
        """Keyword arguments for ``addon.scene.BuildSettings`` (only the ones given)."""
        values = {"smooth_iterations": self.smooth, "smooth_factor": self.smooth_factor,
                  "subdivision_levels": self.subdivision, "detail_strength": self.detail}
        return {k: v for k, v in values.items() if v is not None}


def script_argv(argv: Sequence[str]) -> list:
    """The script's own arguments: everything after ``--`` (Blender passes its own before it).

    ``python scripts/batch.py --input ...`` (no ``--``) works too.
    """
    argv = list(argv)
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def _face_choice(value: str) -> str:
    value = value.strip().lower()
    if value in ("largest", "all") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(f"must be 'largest', 'all' or a face index (0 = largest), not {value!r}")


def parse_formats(value: str) -> tuple:
    names = [v.strip().lower().lstrip(".") for v in value.split(",") if v.strip()]
    names = ["glb" if n in ("gltf", "glb") else n for n in names]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {','.join(FORMATS)}")
    return tuple(dict.fromkeys(names))  # keep order, drop repeats


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blender -b --python-exit-code 1 -P scripts/batch.py --",
        description="Reconstruct 3D faces from photos and write .blend / .glb / .obj / .ply / .stl files.",
        epilog=f"Exit status: {EXIT_OK} all photos done; {EXIT_PHOTOS_FAILED} some photos failed (see the summary); "
               f"{EXIT_USAGE} bad arguments; {EXIT_SERVER} no server; {EXIT_SETUP} numpy/pyzmq missing; "
               f"{EXIT_INTERRUPTED} interrupted.")
    parser.add_argument("--input", "-i", dest="inputs", action="extend", nargs="+", required=True, type=Path,
                        metavar="PHOTO_OR_DIR", help="photos and/or folders of photos (repeatable)")
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="ADDR", help="use a running server (e.g. tcp://127.0.0.1:5555)")
    where.add_argument("--start-server", action="store_true",
                       help="start a local server for this run and stop it at the end (the default without --server)")
    parser.add_argument("--face", type=_face_choice, default="largest", help="largest | all | N (default largest)")
    parser.add_argument("--formats", type=parse_formats, default=DEFAULT_FORMATS,
                        help=f"comma-separated, from {','.join(FORMATS)} (default {','.join(DEFAULT_FORMATS)})")
    parser.add_argument("--resolution", type=_positive_int, help="mesh grid cells across the face (server default 100)")
    parser.add_argument("--smooth", type=_non_negative_int, help="smooth-modifier iterations (add-on default)")
    parser.add_argument("--smooth-factor", type=float, help="smooth-modifier factor (add-on default)")
    parser.add_argument("--subdivision", type=_non_negative_int, help="subdivision levels (add-on default)")
    parser.add_argument("--detail", type=float, help="displacement strength of the detail map in metres (add-on default)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip done photos)")
    parser.add_argument("--jobs", "-j", type=_positive_int, default=2,
                        help="requests kept in flight so the server works while Blender writes files (default 2)")
    parser.add_argument("--recursive", "-r", action="store_true", help="also look for photos in sub-folders")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may take once the server gets to it (default 300)")
    parser.add_argument("--server-timeout", type=float, default=180.0,
                        help="seconds to wait for a started server to load its models (default 180)")
    parser.add_argument("--device", default="auto", help="device of a started server: auto | cpu | cuda (default auto)")
    parser.add_argument("--python", help="interpreter for a started server (default: $FACEFORGE_PYTHON, the repo's .venv, "
                                         "or this Python if it has torch)")
    parser.add_argument("--summary", type=Path, help=f"summary JSON path (default OUTPUT/{SUMMARY})")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="leave Blender's own messages on stdout (default: they go to stderr)")
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the script's arguments (already split off with ``script_argv``). Exits 2 on errors."""
    ns = build_parser().parse_args(list(argv))
    values = vars(ns)
    values["output"] = Path(os.path.abspath(values["output"]))  # Blender's operators want absolute paths
    if values["summary"] is not None:
        values["summary"] = Path(os.path.abspath(values["summary"]))
    return Options(**values)
