"""``python -m inference_server model install|fetch|list``: the user's models, both kinds.

- the ICT-FaceKit head model (full-head mode): ``install`` from a FaceXModel folder, a repository zip
  or a converted .npz; ``fetch`` downloads it at a pinned commit;
- depth checkpoints (``depth_backend`` network): ``install`` a published MiDaS / DPT / Depth Anything
  V2 file (.pt, .pth, .bin, .ckpt), checked tensor by tensor against its detected architecture;
- the cues network (head mode's learned shape): ``install`` a checkpoint written by ``train fit``
  (e.g. trained on a GPU); it replaces the weights shipped with FaceForge.

``install`` tells the two apart by the source's suffix. Exit codes (``addon.wire.errors.Exit``): 0 done,
2 usage, 3 bad source or failed verification (nothing installed), 5 network. Every failure is one
``error:`` line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addon.wire.errors import Exit

from .head import store

EXIT_OK, EXIT_USAGE, EXIT_BAD_SOURCE, EXIT_NETWORK = Exit.OK, Exit.USAGE, Exit.BAD_INPUT, Exit.SERVER


def add_model_commands(subparsers) -> None:
    model = subparsers.add_parser("model", help="install, fetch or list models: the ICT-FaceKit head model "
                                                "(full-head mode) and depth checkpoints (depth_backend network)")
    actions = model.add_subparsers(dest="model_command", required=True)
    install = actions.add_parser("install", help="install a head model (FaceXModel folder, repository zip or "
                                                 "converted .npz) or a depth checkpoint (.pt, .pth, .bin, .ckpt)")
    install.add_argument("source", type=Path)
    install.add_argument("--architecture", default="auto",
                         help="depth checkpoints: the architecture id (default: detected from the file)")
    install.add_argument("--overwrite", action="store_true", help="depth checkpoints: replace one of the same name")
    fetch = actions.add_parser("fetch", help=f"download ICT-FaceKit at commit {store.PINNED_COMMIT[:12]}, verify, install")
    fetch.add_argument("--url", default=store.PINNED_URL, help="archive address (default: the pinned GitHub archive)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for data (default %(default)s)")
    actions.add_parser("list", help="show the installed head models and depth checkpoints")


def run_model_command(args: argparse.Namespace) -> int:
    try:
        if args.model_command == "install":
            from .depth.store import SUFFIXES as DEPTH_SUFFIXES

            if args.source.suffix.lower() in DEPTH_SUFFIXES:
                from .cues import checkpoint as cues

                if cues.is_cues_file(args.source):
                    return _install_cues(args)
                return _install_depth(args)
            store.install(args.source)
        elif args.model_command == "fetch":
            if not args.timeout > 0:
                return _fail(f"--timeout must be positive, got {args.timeout}", EXIT_USAGE)
            store.fetch(args.url, timeout_s=args.timeout)
        else:
            _list()
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except store.InstallError as exc:
        return _fail(str(exc), EXIT_BAD_SOURCE)
    except store.FetchError as exc:
        return _fail(str(exc), EXIT_NETWORK)
    return EXIT_OK


def _install_depth(args: argparse.Namespace) -> int:
    from .depth import CheckpointError, get_architecture, install_checkpoint, installed

    try:
        if args.architecture != "auto":
            get_architecture(args.architecture)  # an unknown id is a usage error, not a bad file
        target = install_checkpoint(args.source, architecture=args.architecture, overwrite=args.overwrite)
    except CheckpointError as exc:
        return _fail(str(exc), EXIT_BAD_SOURCE)
    except FileExistsError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        return _fail(f"cannot install {args.source}: {exc.strerror or exc}", EXIT_BAD_SOURCE)
    arch = get_architecture(installed()[target.stem])
    print(f"installed depth checkpoint {target.stem!r}: {arch.title}, weights licence {arch.licence}")
    print(f"  to   {target} ({target.stat().st_size / 1e6:.1f} MB)")
    print(f"use it with --depth-backend network --depth-model {target.stem}")
    return EXIT_OK


def _install_cues(args: argparse.Namespace) -> int:
    from .cues import checkpoint as cues

    try:
        target = cues.install(args.source)
    except cues.CheckpointError as exc:
        return _fail(str(exc), EXIT_BAD_SOURCE)
    except OSError as exc:
        return _fail(f"cannot install {args.source}: {exc.strerror or exc}", EXIT_BAD_SOURCE)
    print(f"installed cues network to {target} ({target.stat().st_size / 1e6:.1f} MB); "
          "head mode's shape_cues network uses it from now on")
    return EXIT_OK


def _list() -> None:
    from .depth.store import depth_dir, installed

    models = store.installed_models()
    if not models:
        print(store.missing_model_message())
    for model in models:
        print(f"head   {model.path}  {model.size_bytes / 1e6:.1f} MB  {model.vertices} vertices, {model.identities} "
              f"identity modes, {model.expressions} expressions")
    checkpoints = installed()
    if not checkpoints:
        print(f"no depth checkpoint installed (looked in {depth_dir()}): `python -m inference_server model install "
              "CHECKPOINT` with a MiDaS / DPT / Depth Anything V2 file")
    for name, arch in checkpoints.items():
        path = depth_dir() / f"{name}.pt"
        print(f"depth  {path}  {path.stat().st_size / 1e6:.1f} MB  {name} ({arch})")
    from .cues import checkpoint as cues

    path = cues.find()
    kind = "installed" if path != cues.SHIPPED else "shipped"
    print(f"cues   {path}  ({kind})" if path.is_file() else "cues   none (shape_cues network is unavailable)")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
