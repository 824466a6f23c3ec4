"""Command line: ``serve`` runs the ZeroMQ server; ``reconstruct`` turns one photo into mesh files;
``video`` turns a video of one person into a head and its per-frame performance;
``web`` serves a page to upload a photo and look at its head;
``keys generate`` writes a CURVE key pair for remote use; ``model`` installs models; ``train`` makes
the cues network (training data, training, evaluation).

Reconstruction options come from the one schema (``addon.wire.options``): ``serve`` takes them as the
server's defaults (and limits), ``reconstruct`` as the request's options.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from addon.wire import options, security
from addon.wire.errors import EXIT_HELP, Exit, exit_for

from . import limits
from .cues.cli import add_train_commands, run_train_command
from .model_cli import add_model_commands, run_model_command
from .video.cli import add_video_command, run_video_command
from .web.cli import add_web_command, run_web_command


def request_options() -> tuple:
    """The schema's request options, read when a parser is built (so the parser follows the schema)."""
    return options.on_side(options.SERVER, options.LIMIT)


def serve_options() -> tuple:
    """``serve``'s request defaults: all but ``depth_model``, which the server takes as a file (``--depth-model``)."""
    return tuple(option for option in request_options() if option.name != "depth_model")


def _parser(prog: str = "python -m inference_server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, epilog=EXIT_HELP)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the inference server", epilog=EXIT_HELP)
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555",
                       help="ZeroMQ address to bind (default %(default)s: this machine only; other addresses need "
                            "--secret-key and --client-keys, or --insecure)")
    serve.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    serve.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads, split between the --workers (0 = torch default; the depth network "
                            "then uses 2)")
    serve.add_argument("--depth-model", default="", metavar="PATH_OR_NAME",
                       help="a depth checkpoint file (or installed name) loaded at start: what depth_backend network "
                            "uses when a request names no depth_model")
    serve.add_argument("--workers", type=limits.bounded(int, 1, 64), default=1,
                       help="model-owning workers: 1 (default) is a thread of the server; N > 1 are N processes, "
                            "each with its own models (memory x N) and --threads / N torch threads (at least 1), "
                            "for N reconstructions at once")
    serve.add_argument("--worker-grace-seconds", type=limits.bounded(float, 0.5, 3600), default=10.0, metavar="S",
                       help="a worker still running a request this long past its client's deadline or "
                            "--max-request-seconds is hung: the request is answered and the worker replaced "
                            "(default %(default)g)")
    serve.add_argument("--max-queue", type=limits.bounded(int, 1, 10_000), default=32,
                       help="queued reconstructions, for all workers together, before 'busy' replies")
    serve.add_argument("--max-unread-mb", type=limits.bounded(float, 1, 65536), default=128, metavar="MB",
                       help="reply bytes held for one client connection that does not read them; work whose "
                            "reply would pass it gets 'busy' (default %(default)g, at least --max-reply-mb)")
    serve.add_argument("--max-connections", type=limits.bounded(int, 1, 100_000), default=256,
                       help="open client connections; at the limit a peer address holding two more than the new "
                            "one's gives up its connection idle longest, else the new one is closed (default %(default)s)")
    serve.add_argument("--max-connections-per-peer", type=limits.bounded(int, 1, 100_000), default=64,
                       help="open connections from one IP address; more are closed (default %(default)s)")
    serve.add_argument("--max-message-mb", type=limits.bounded(float, 0.1, 4096), default=256,
                       help="largest accepted request, MB")
    remote = serve.add_argument_group("remote use (CURVE authentication and encryption)")
    remote.add_argument("--secret-key", metavar="FILE", help="the server's key pair (SERVER.key_secret)")
    remote.add_argument("--client-keys", metavar="DIR", help="folder of the public keys (*.key) of accepted clients")
    remote.add_argument("--insecure", action="store_true",
                        help="serve a non-loopback address without authentication or encryption")
    limits.add_arguments(serve)
    options.add_arguments(serve, serve_options(), title="request defaults (max_pixels: the most a request may ask for)")
    recon = commands.add_parser("reconstruct", help="reconstruct the face(s) in one photo, or one head from "
                                "several photos of one person", epilog=EXIT_HELP)
    recon.add_argument("photos", nargs="+", type=Path, metavar="PHOTO",
                       help="a photo; several photos of one person (head mode) make one head fitted to all of them")
    recon.add_argument("-o", "--output", type=Path, help="OUT.obj | OUT.ply | OUT.glb | OUT.npz (one file per face with --face all; "
                       "a head's glb carries its expressions as morph targets)")
    options.add_arguments(recon, request_options(), title="reconstruction options (default: the server's)")
    recon.add_argument("--server", help="use a running server at this address instead of loading models here")
    recon.add_argument("--device", default="auto", help="device for in-process reconstruction")
    recon.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    recon.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    security.add_client_arguments(recon)
    keys = commands.add_parser("keys", help="CURVE key pairs for remote use")
    keys.add_argument("action", choices=("generate",))
    keys.add_argument("folder", type=Path, help="where NAME.key (public) and NAME.key_secret (private) are written")
    keys.add_argument("--name", default="faceforge", help="file name stem (default %(default)s)")
    add_video_command(commands, request_options())
    add_web_command(commands)
    add_model_commands(commands)
    add_train_commands(commands)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m inference_server") -> int:
    args = _parser(prog).parse_args(argv)
    if args.command == "model":
        return run_model_command(args)
    if args.command == "train":
        return run_train_command(args)
    from .log_limits import LOG_FORMAT

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        return {"serve": _serve, "reconstruct": _reconstruct, "keys": _keys, "video": run_video_command,
                "web": run_web_command}[args.command](args)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


def _serve(args) -> int:
    from .config import ReconstructionConfig, ServerConfig
    from .server import InferenceServer
    from .workers import WorkerFailed

    try:  # what an operator can get wrong is checked before torch loads (seconds)
        keys = _server_keys(args)
        config = ServerConfig(bind=args.bind, max_queue=args.max_queue, limits=limits.from_args(args), keys=keys,
                              max_message_bytes=int(args.max_message_mb * 1024 * 1024), insecure=args.insecure,
                              workers=args.workers, worker_grace_seconds=args.worker_grace_seconds,
                              max_unread_bytes=int(args.max_unread_mb * 1024 * 1024),
                              max_connections=args.max_connections,
                              max_connections_per_peer=args.max_connections_per_peer)
        defaults = ReconstructionConfig(**options.given(args, serve_options()))
        InferenceServer.validate(config, defaults)
    except ValueError as exc:  # bad key files, defaults over the limits, a reachable address without keys
        print(f"error: {exc}", file=sys.stderr)
        return Exit.USAGE
    server = InferenceServer(config, _pipeline_recipe(args, defaults), defaults)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())

    def ready(address: str, info: dict) -> None:
        logging.getLogger("faceforge.server").info("ready on %s (device %s, protocol %s, %d worker(s))", address,
                                                   info.get("device"), server.info()["protocol_version"], args.workers)
    try:
        server.serve_forever(on_ready=ready)
    except WorkerFailed as exc:  # an unusable device or checkpoint (usage, setup), models that fail to load
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit
    except Exception as exc:  # bind failures end the process with one line
        print(f"error: {exc}", file=sys.stderr)
        return Exit.FAILED
    return Exit.OK


def _pipeline_recipe(args, defaults):
    """What each worker builds (torch is imported by the workers alone: ``recipe``)."""
    from .head.store import find_model
    from .recipe import PipelineRecipe

    return PipelineRecipe(args.device, defaults, find_model(), args.depth_model, args.threads, args.workers)


def _server_keys(args):
    from .security import ServerKeys

    if not args.secret_key and not args.client_keys:
        return None
    if not args.secret_key or not args.client_keys:
        raise ValueError("CURVE needs both --secret-key and --client-keys")
    return ServerKeys.load(args.secret_key, args.client_keys)


def _keys(args) -> int:
    try:
        public, secret = security.generate(args.folder, args.name)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.USAGE
    print(f"public key (share it): {public}\nkey pair (keep it private): {secret}")
    return Exit.OK


def _reconstruct(args) -> int:
    from addon.batch.inputs import read_photo
    from addon.wire.errors import ProtocolError

    from . import exporters

    if args.output and args.output.suffix.lower() not in exporters.SUFFIXES:
        print(f"error: unsupported output {args.output.suffix!r}; use one of {', '.join(exporters.SUFFIXES)}", file=sys.stderr)
        return Exit.USAGE
    photos = []
    for path in args.photos:
        try:
            photos.append(read_photo(path))  # regular files of bounded size only, never blocking on a FIFO
        except OSError as exc:
            print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
            return Exit.BAD_INPUT
    named = args.photos[0] if len(photos) == 1 else ", ".join(map(str, args.photos))
    request = options.given(args, request_options())
    try:
        faces, meta = (_through_server if args.server else _in_process)(args, photos, request)
    except ProtocolError as err:
        print(f"error: {named}: {err.message}", file=sys.stderr)
        return exit_for(err.code)
    outputs = []
    if args.output:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            for index, arrays, face_meta in faces:
                target = args.output if len(faces) == 1 else args.output.with_name(f"{args.output.stem}_face{index}{args.output.suffix}")
                outputs += [str(p) for p in exporters.write(target, arrays, face_meta)]
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return Exit.FAILED
    summary = {"photo": str(args.photos[0]), "photos": [str(path) for path in args.photos],
               "image_size": meta.get("image_size"), "faces_detected": meta.get("faces_detected"),
               "faces": [{"index": i, "vertices": int(len(a["vertices"])),
                          "triangles": int(len(exporters.polygons(a).triangles()))} for i, a, _ in faces],
               "timings_ms": meta.get("timings_ms"), "outputs": outputs}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for face in summary["faces"]:
            print(f"face {face['index']}: {face['vertices']} vertices, {face['triangles']} triangles")
        for path in outputs:
            print(f"wrote {path}")
    return Exit.OK


def _in_process(args, photos: list[bytes], request: dict):
    from .pipeline import FacePipeline, resolve_device

    from .head.store import find_model

    pipeline = FacePipeline(resolve_device(args.device), head_model=find_model())
    result = pipeline.reconstruct(photos, request)
    return [(face.index, pipeline.whole_arrays(face), face.meta) for face in result.faces], result.meta


def _through_server(args, photos: list[bytes], request: dict):
    from addon.wire.client import Client
    from addon.wire.errors import ErrorCode, ProtocolError

    try:
        keys = security.client_keys_from_args(args)
    except security.KeyFileError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
    with Client(args.server, timeout=args.timeout, keys=keys) as client:
        result = client.reconstruct(photos, request)
    return [(face.index, face.arrays, face.meta) for face in result.faces], result.meta


def _leave(code: int) -> None:
    """End the process once ``main`` is done: its files are closed and workers joined, so only the output is
    flushed. The interpreter's own teardown collects the loaded models' whole object graph (2.7 s after an
    idle ``serve`` here, more on a loaded machine) and does nothing a finished process needs; a SIGTERM must
    end the server well within the 5 s ``LocalServer.stop`` gives it before SIGKILL (a CI run saw that SIGKILL)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)


def console() -> None:
    """The ``faceforge`` command an installed distribution puts on PATH (``pyproject.toml``)."""
    _leave(main(prog="faceforge"))


if __name__ == "__main__":
    _leave(main())
