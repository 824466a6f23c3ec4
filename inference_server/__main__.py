"""Command line: ``serve`` runs the ZeroMQ server; ``reconstruct`` turns one photo into mesh files."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .head.cli import add_model_commands, run_model_command

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_NO_FACE, EXIT_SERVER = 0, 1, 2, 3, 4, 5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inference_server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the inference server")
    serve.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ address to bind (default %(default)s)")
    serve.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    serve.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    serve.add_argument("--max-queue", type=int, default=32, help="queued reconstructions before 'busy' replies")
    serve.add_argument("--max-message-mb", type=float, default=256, help="largest accepted request, MB")
    recon = commands.add_parser("reconstruct", help="reconstruct the face(s) in one photo")
    recon.add_argument("photo", type=Path)
    recon.add_argument("-o", "--output", type=Path, help="OUT.obj | OUT.ply | OUT.npz (one file per face with --face all)")
    recon.add_argument("--face", default="largest", help="largest | all | N (0 = largest)")
    recon.add_argument("--resolution", type=int, help="grid cells across the face width (default 100)")
    recon.add_argument("--smooth", type=int, help="Taubin smoothing passes for the exported mesh")
    recon.add_argument("--server", help="use a running server at this address instead of loading models here")
    recon.add_argument("--device", default="auto", help="device for in-process reconstruction")
    recon.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    recon.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_model_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "model":
        return run_model_command(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return _serve(args) if args.command == "serve" else _reconstruct(args)
    except KeyboardInterrupt:
        return 130


def _serve(args) -> int:
    import torch

    from .config import ServerConfig
    from .pipeline import FacePipeline, resolve_device
    from .server import InferenceServer

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = ServerConfig(bind=args.bind, max_queue=args.max_queue,
                          max_message_bytes=int(args.max_message_mb * 1024 * 1024))
    server = InferenceServer(config, lambda: FacePipeline(device))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())

    def ready(address: str, info: dict) -> None:
        logging.getLogger("faceforge.server").info("ready on %s (device %s, protocol %s)", address, info.get("device"),
                                                   server.info()["protocol_version"])
    try:
        server.serve_forever(on_ready=ready)
    except Exception as exc:  # bind failures and model-loading failures end the process with one line
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def _reconstruct(args) -> int:
    from addon.wire.protocol import ErrorCode, ProtocolError

    from . import exporters

    if args.output and args.output.suffix.lower() not in exporters.SUFFIXES:
        print(f"error: unsupported output {args.output.suffix!r}; use one of {', '.join(exporters.SUFFIXES)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        data = args.photo.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.photo}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = {"face": args.face}
    if args.resolution is not None:
        options["resolution"] = args.resolution
    if args.smooth is not None:
        options["smooth_iterations"] = args.smooth
    try:
        faces, meta = (_through_server if args.server else _in_process)(args, data, options)
    except ProtocolError as err:
        codes = {ErrorCode.NO_FACE: EXIT_NO_FACE, ErrorCode.BAD_IMAGE: EXIT_BAD_INPUT, ErrorCode.TOO_LARGE: EXIT_BAD_INPUT,
                 ErrorCode.BAD_REQUEST: EXIT_USAGE, ErrorCode.TIMEOUT: EXIT_SERVER, ErrorCode.UNREACHABLE: EXIT_SERVER,
                 ErrorCode.UNSUPPORTED_VERSION: EXIT_SERVER, ErrorCode.BUSY: EXIT_SERVER}
        print(f"error: {args.photo}: {err.message}", file=sys.stderr)
        return codes.get(err.code, EXIT_INTERNAL)
    outputs = []
    if args.output:
        for index, arrays in faces:
            target = args.output if len(faces) == 1 else args.output.with_name(f"{args.output.stem}_face{index}{args.output.suffix}")
            outputs += [str(p) for p in exporters.write(target, arrays)]
    summary = {"photo": str(args.photo), "image_size": meta.get("image_size"), "faces_detected": meta.get("faces_detected"),
               "faces": [{"index": i, "vertices": int(len(a["vertices"])), "triangles": int(len(a["faces"]))} for i, a in faces],
               "timings_ms": meta.get("timings_ms"), "outputs": outputs}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for face in summary["faces"]:
            print(f"face {face['index']}: {face['vertices']} vertices, {face['triangles']} triangles")
        for path in outputs:
            print(f"wrote {path}")
    return EXIT_OK


def _in_process(args, data: bytes, options: dict):
    from .pipeline import FacePipeline, resolve_device

    pipeline = FacePipeline(resolve_device(args.device))
    result = pipeline.reconstruct(data, options)
    return [(face.index, face.arrays) for face in result.faces], result.meta


def _through_server(args, data: bytes, options: dict):
    from addon.wire.client import Client

    with Client(args.server, timeout=args.timeout) as client:
        result = client.reconstruct(data, options)
    return [(face.index, face.arrays) for face in result.faces], result.meta


if __name__ == "__main__":
    sys.exit(main())
