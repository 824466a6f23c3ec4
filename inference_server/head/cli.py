"""``python -m inference_server model install|fetch|list``: the head model's command line.

Exit codes (``addon.wire.errors.Exit``): 0 done, 2 usage, 3 bad source or failed verification (nothing
installed), 5 network. Every failure is one ``error:`` line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addon.wire.errors import Exit

from . import store

EXIT_OK, EXIT_USAGE, EXIT_BAD_SOURCE, EXIT_NETWORK = Exit.OK, Exit.USAGE, Exit.BAD_INPUT, Exit.SERVER


def add_model_commands(subparsers) -> None:
    model = subparsers.add_parser("model", help="install, fetch or list the ICT-FaceKit head model (full-head mode)")
    actions = model.add_subparsers(dest="model_command", required=True)
    install = actions.add_parser("install", help="install from a FaceXModel folder, a repository zip or a converted .npz")
    install.add_argument("source", type=Path)
    fetch = actions.add_parser("fetch", help=f"download ICT-FaceKit at commit {store.PINNED_COMMIT[:12]}, verify, install")
    fetch.add_argument("--url", default=store.PINNED_URL, help="archive address (default: the pinned GitHub archive)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for data (default %(default)s)")
    actions.add_parser("list", help="show the installed head models")


def run_model_command(args: argparse.Namespace) -> int:
    try:
        if args.model_command == "install":
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


def _list() -> None:
    models = store.installed_models()
    if not models:
        print(store.missing_model_message())
        return
    for model in models:
        print(f"{model.path}  {model.size_bytes / 1e6:.1f} MB  {model.vertices} vertices, {model.identities} identity "
              f"modes, {model.expressions} expressions")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
