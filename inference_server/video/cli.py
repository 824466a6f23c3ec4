"""``python -m inference_server video CLIP.mp4 -o head.npz --csv clip.csv``: one head and its performance
from a video of one person, in this process (the server does not take videos yet)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from addon.wire import options
from addon.wire.errors import EXIT_HELP, Exit, ProtocolError, exit_for


def add_video_command(commands, request_options: tuple) -> None:
    video = commands.add_parser("video", help="one head and its expressions and head motion per frame from a "
                                "video of one person", epilog=EXIT_HELP)
    video.add_argument("video", type=Path, metavar="VIDEO", help="MP4, MOV, MKV, WebM or AVI")
    video.add_argument("-o", "--output", type=Path,
                       help="the head: OUT.obj | OUT.ply | OUT.npz (the npz also holds the per-frame anim_* arrays)")
    video.add_argument("--csv", type=Path, help="per-frame ARKit blend shapes and head angles (Live Link Face's CSV layout)")
    video.add_argument("--frames", metavar="START:STOP", help="frames to use (0-based, STOP excluded; default all)")
    options.add_arguments(video, request_options, title="reconstruction options")
    video.add_argument("--device", default="auto", help="device for the models")
    video.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run_video_command(args) -> int:
    from .. import exporters
    from ..head.store import find_model
    from ..pipeline import FacePipeline, resolve_device
    from .arkit import write_csv
    from .capture import capture_video
    from ..config import ReconstructionConfig
    from .reader import VideoReader, parse_range

    if args.output and args.output.suffix.lower() not in exporters.SUFFIXES:
        print(f"error: unsupported output {args.output.suffix!r}; use one of {', '.join(exporters.SUFFIXES)}", file=sys.stderr)
        return Exit.USAGE
    try:
        frame_range = parse_range(args.frames)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.USAGE
    request = options.given(args, options.on_side(options.SERVER, options.LIMIT))
    try:
        with VideoReader(args.video, ReconstructionConfig().with_params(request).max_pixels):
            pass  # an unreadable file is reported before the models load
        pipeline = FacePipeline(resolve_device(args.device), head_model=find_model())
        result, performance = capture_video(pipeline, args.video, request, frame_range, _printer(args.json))
    except ProtocolError as err:
        print(f"error: {args.video}: {err.message}", file=sys.stderr)
        return exit_for(err.code)
    face = result.faces[0]
    outputs = []
    try:
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            outputs += [str(path) for path in exporters.write(args.output, pipeline.whole_arrays(face))]
        if args.csv:
            args.csv.parent.mkdir(parents=True, exist_ok=True)
            write_csv(args.csv, performance, face.meta["expressions"])
            outputs.append(str(args.csv))
    except OSError as exc:
        print(f"error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    summary = {"video": str(args.video), **face.meta["video"], "frames_per_s": result.meta["frames_per_s"],
               "timings_ms": result.meta["timings_ms"], "outputs": outputs}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['frames']} frames, {summary['tracked']} with the face, key frames {summary['key_frames']}, "
              f"{summary['frames_per_s']} frames/s")
        for path in outputs:
            print(f"wrote {path}")
    return Exit.OK


def _printer(quiet: bool):
    """Progress on one terminal line (stderr), at most every 2 % of the work."""
    last = [-1]

    def report(stage: str, text: str, fraction: float, face: int, faces: int) -> None:
        step = int(fraction * 50)
        if not quiet and step != last[0] and sys.stderr.isatty():
            last[0] = step
            print(f"\r{100 * fraction:5.1f} % {text[:70]:<70}", end="", file=sys.stderr, flush=True)

    return report
