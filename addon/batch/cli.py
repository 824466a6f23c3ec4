"""Command line of the headless batch: the options, argument parsing, formats, and whether this
Python can run the batch at all. Imports neither bpy, numpy nor pyzmq, so ``--help``, usage errors
and the missing-module message work in any Python.

Reconstruction and modifier options are not declared here: their flags, types, ranges and help
come from the one schema (``addon.wire.options``), so a bad value (``--resolution 4``) is refused
while parsing, before any server starts. Options not given are not sent: the server's defaults
(advertised in its ``info`` reply) and the schema's build defaults apply.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..wire import options, security
from ..wire.errors import EXIT_HELP, Exit

FORMATS = ("blend", "glb", "fbx", "obj", "ply", "stl")
DEFAULT_FORMATS = ("blend", "glb")
SUMMARY = "summary.json"


@dataclass
class Options:
    inputs: list
    output: Path
    server: str | None = None
    start_server: bool = False
    formats: tuple = DEFAULT_FORMATS
    server_key: str | None = None   # CURVE: the server's public key file
    client_key: str | None = None   # CURVE: this client's key pair file
    request: dict = field(default_factory=dict)  # SERVER and LIMIT options given: sent with every request
    build: dict = field(default_factory=dict)    # BUILD options given: ``BuildSettings`` keywords
    overwrite: bool = False
    jobs: int = 2
    workers: int = 1
    shard: Path | None = None  # a child of ``--workers``: the photos the parent gave it (workers.read_shard)
    recursive: bool = False
    same_person: bool = False  # each sub-folder of an input folder is one person: one head from its photos
    timeout: float = 300.0
    server_timeout: float = 180.0
    device: str = "auto"
    python: str | None = None
    summary: Path | None = None
    verbose: bool = False
    ray: str | None = None       # run on Ray: "local", "auto" or a cluster address (addon/batch/distributed.py)
    cpu_actors: int = 2          # Ray: model actors on CPU (without --gpus-per-actor)
    gpus_per_actor: float = 0.0  # Ray: GPU share of each model actor; > 0: as many GPU actors as the cluster has room for
    writer_actors: int = 2       # Ray: Blender processes writing the files

    @property
    def summary_path(self) -> Path:
        return self.summary or self.output / SUMMARY

    def recorded(self) -> dict:
        """The options as ``summary.json`` records them."""
        return {"inputs": [str(p) for p in self.inputs], "output": str(self.output), "formats": list(self.formats),
                "request": self.request, "build": self.build, "jobs": self.jobs, "overwrite": self.overwrite,
                "server": self.server, "same_person": self.same_person, "ray": self.ray}

    def reserved_names(self) -> tuple:
        """Names in the output folder that are the batch's own, never a photo's (its summary)."""
        try:
            return (self.summary_path.absolute().relative_to(self.output.absolute()).parts[0],)
        except ValueError:  # the summary is written elsewhere
            return ()


def script_argv(argv: Sequence[str]) -> list:
    """The script's own arguments: everything after ``--`` (Blender passes its own before it).

    ``python scripts/batch.py --input ...`` (no ``--``) works too.
    """
    argv = list(argv)
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One ``error:`` line instead of the usage block (exit 2, ``Exit.USAGE``)."""
        self.exit(Exit.USAGE, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="blender -b --python-exit-code 1 -P scripts/batch.py --",
        description="Reconstruct 3D faces from photos and write .blend / .glb / .obj / .ply / .stl files.",
        epilog=EXIT_HELP)
    parser.add_argument("--input", "-i", dest="inputs", action="extend", nargs="+", required=True, type=Path,
                        metavar="PHOTO_OR_DIR", help="photos and/or folders of photos (repeatable)")
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="DIR", help="output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="ADDR", help="use a running server (e.g. tcp://127.0.0.1:5555)")
    where.add_argument("--start-server", action="store_true",
                       help="start a local server for this run and stop it at the end (the default without --server)")
    parser.add_argument("--formats", type=parse_formats, default=DEFAULT_FORMATS,
                        help=f"comma-separated, from {','.join(FORMATS)} (default {','.join(DEFAULT_FORMATS)})")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip done photos)")
    parser.add_argument("--jobs", "-j", type=_positive_int, default=2,
                        help="requests kept in flight so the server works while Blender writes files (default 2)")
    parser.add_argument("--workers", "-w", type=_positive_int, default=None,
                        help="Blender processes sharing the photos and one server (default: one per two CPU "
                             "cores, 1 to 8)")
    parser.add_argument("--shard", type=Path, help=argparse.SUPPRESS)
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--recursive", "-r", action="store_true", help="also look for photos in sub-folders")
    inputs.add_argument("--same-person", action="store_true",
                        help="each sub-folder of an input folder is one person: one head fitted to all its photos "
                             "(head mode; at most the server's max_photos per person); loose photos stay one each")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may take once the server gets to it (default 300)")
    parser.add_argument("--server-timeout", type=float, default=180.0,
                        help="seconds to wait for a started server to load its models (default 180)")
    parser.add_argument("--device", default="auto", help="device of a started server: auto | cpu | cuda (default auto)")
    parser.add_argument("--python", help="interpreter for a started server (default: $FACEFORGE_PYTHON, the "
                                         "checkout's .venv, or this Python if it has torch)")
    parser.add_argument("--summary", type=Path, help=f"summary JSON path (default OUTPUT/{SUMMARY})")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show each photo's server stages, and leave Blender's own messages on stdout "
                             "(default: one line per photo; Blender's messages go to stderr)")
    ray = parser.add_argument_group("Ray (instead of one server: see README, \"The batch on Ray\")")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="run on Ray: 'local' starts Ray in this process, 'auto' or ray://HOST:10001 joins a cluster; "
                          "needs `pip install ray` in this Python and in every node's")
    ray.add_argument("--cpu-actors", type=_positive_int, default=2, help="Ray: model actors on CPU (default 2)")
    ray.add_argument("--gpus-per-actor", type=float, default=0.0,
                     help="Ray: each model actor's share of a GPU; > 0 puts the models on the cluster's GPUs")
    ray.add_argument("--writer-actors", type=_positive_int, default=2,
                     help="Ray: Blender processes building and writing the files (default 2)")
    # Read from the schema each time a parser is built: the parser follows the schema, whatever it says then.
    options.add_arguments(parser, options.on_side(options.SERVER, options.LIMIT),
                          title="reconstruction options (default: the server's)")
    options.add_arguments(parser, options.on_side(options.BUILD), title="Blender modifiers (default: the add-on's)")
    security.add_client_arguments(parser)
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the script's arguments (already split off with ``script_argv``). Exits 2 on errors."""
    namespace = build_parser().parse_args(list(argv))
    chosen = options.given(namespace, options.OPTIONS)
    build = {name: value for name, value in chosen.items() if options.BY_NAME[name].side == options.BUILD}
    request = {name: value for name, value in chosen.items() if name not in build}
    values = {k: v for k, v in vars(namespace).items() if k not in options.BY_NAME}
    values["output"] = Path(os.path.abspath(values["output"]))  # Blender's operators want absolute paths
    if values["ray"] and (values["server"] or values["start_server"] or values["workers"] or values["shard"]):
        build_parser().error("--ray runs the models on Ray's actors: it takes no --server, --start-server or --workers")
    if values["workers"] is None:
        from .workers import default_workers

        values["workers"] = default_workers()
    if values["summary"] is not None:
        values["summary"] = Path(os.path.abspath(values["summary"]))
    return Options(**values, request=request, build=build)


def missing_modules(names: Sequence[str] = ("numpy", "zmq")) -> list:
    """Modules the batch needs that this Python cannot import (Blender's bundled or the system's)."""
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
