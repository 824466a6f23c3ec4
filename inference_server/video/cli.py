"""``python -m inference_server video CLIP.mp4 -o head.npz --csv clip.csv``: one head and its performance
from a video of one person, in this process or (``--server``) by a running server."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from addon.wire import options, security
from addon.wire.errors import EXIT_HELP, Exit, ProtocolError, exit_for


def add_video_command(commands, request_options: tuple) -> None:
    video = commands.add_parser("video", help="one head and its expressions and head motion per frame from a "
                                "video of one person", epilog=EXIT_HELP)
    video.add_argument("video", type=Path, metavar="VIDEO", help="MP4, MOV, MKV, WebM or AVI")
    video.add_argument("-o", "--output", type=Path,
                       help="the head: OUT.obj | OUT.ply | OUT.glb | OUT.npz (the npz also holds the per-frame anim_* arrays)")
    video.add_argument("--csv", type=Path, help="per-frame ARKit blend shapes and head angles (Live Link Face's CSV layout)")
    options.add_arguments(video, request_options, title="reconstruction options")
    video.add_argument("--server", help="send the video to a running server at this address instead of loading models here")
    video.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server")
    video.add_argument("--device", default="auto", help="device for in-process use")
    video.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    security.add_client_arguments(video)


def run_video_command(args) -> int:
    from addon.data.arkit import write_csv

    from .. import exporters
    from ..head.store import find_model
    from ..pipeline import FacePipeline, resolve_device
    from ..config import ReconstructionConfig
    from .capture import capture_video
    from .reader import VideoReader

    if args.output and args.output.suffix.lower() not in exporters.SUFFIXES:
        print(f"error: unsupported output {args.output.suffix!r}; use one of {', '.join(exporters.SUFFIXES)}", file=sys.stderr)
        return Exit.USAGE
    request = options.given(args, options.on_side(options.SERVER, options.LIMIT))
    try:
        if args.server:
            arrays, meta, result_meta = _through_server(args, request)
        else:
            with VideoReader(args.video, ReconstructionConfig().with_params(request).max_pixels, str(args.video)):
                pass  # an unreadable file is reported before the models load
            pipeline = FacePipeline(resolve_device(args.device), head_model=find_model())
            result, _ = capture_video(pipeline, args.video, request, report=_printer(args.json), name=str(args.video))
            arrays, meta, result_meta = pipeline.whole_arrays(result.faces[0]), result.faces[0].meta, result.meta
    except ProtocolError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return exit_for(err.code)
    except OSError as exc:
        print(f"error: cannot read {args.video}: {exc.strerror or exc}", file=sys.stderr)
        return Exit.BAD_INPUT
    outputs = []
    try:
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            outputs += [str(path) for path in exporters.write(args.output, arrays, meta)]
        if args.csv:
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            write_csv(args.csv, arrays, meta["video"]["fps"], meta["expressions"])
            outputs.append(str(args.csv))
    except OSError as exc:
        print(f"error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    summary = {"video": str(args.video), **meta["video"], "frames_per_s": result_meta.get("frames_per_s"),
               "timings_ms": result_meta.get("timings_ms"), "outputs": outputs}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['frames']} frames, {summary['tracked']} with the face, key frames {summary['key_frames']}, "
              f"{summary['frames_per_s']} frames/s")
        for path in outputs:
            print(f"wrote {path}")
    return Exit.OK


def _through_server(args, request: dict) -> tuple[dict, dict, dict]:
    from addon.batch.inputs import read_photo
    from addon.wire.client import Client
    from addon.wire.errors import ErrorCode

    video = read_photo(args.video)  # a regular file within the protocol's default message size, read without blocking
    try:
        keys = security.client_keys_from_args(args)
    except security.KeyFileError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
    printer = _printer(args.json)
    with Client(args.server, timeout=args.timeout, keys=keys) as client:
        reply = client.reconstruct_video(video, request, on_progress=lambda p: printer(
            p["stage"], p["text"], p["fraction"], p.get("face", 0), p.get("faces", 0)))
    face = reply.faces[0]
    return face.arrays, face.meta, reply.meta


def _printer(quiet: bool):
    """Progress on one terminal line (stderr), at most every 2 % of the work."""
    last = [-1]

    def report(stage: str, text: str, fraction: float, face: int, faces: int) -> None:
        step = int(fraction * 50)
        if not quiet and step != last[0] and sys.stderr.isatty():
            last[0] = step
            print(f"\r{100 * fraction:5.1f} % {text[:70]:<70}", end="", file=sys.stderr, flush=True)

    return report
