"""Where the batch's Blender time goes: one table of per-step times for face and head replies.

    .venv/bin/python benchmarks/profile_batch.py [--blender /usr/bin/blender | --blender python]
        [--modes face,head] [--formats blend,glb] [--runs 5]

The parent (this Python, with torch) starts a server per mode -- head mode with the shared
ICT-FaceKit model installed into a temporary data folder -- asks it for the astronaut photo once,
and stores the reply's frames. A child Blender then decodes each reply and writes it ``--runs``
times through the batch's own code (``addon.batch.writer.write_photo``, a fresh output folder
each time), with a timer (time.perf_counter) wrapped around every step:

  reset       Blender.reset: the previous photo's datablocks removed
  mesh        faces.mesh_from_arrays: vertices, loops, polygons, UVs
  images      faces.face_images (+ the head's lit texture): PNG bytes encoded once and packed
  materials   faces.skin_material (one per face, seven per head)
  shape keys  heads.add_shape_keys (53 per head)
  modifiers   faces.add_modifiers: the stack is set up, not yet evaluated
  metadata    meshdata.idprop_value: the faceforge custom property
  build rest  the rest of build.build_reconstruction (objects, linking, pose)
  .blend      Blender.save_blend, with the first depsgraph evaluation (modifiers, shape keys) that
              Blender's operators run before they start
  textures    the PNGs the other formats point at (the packed bytes, written)
  evaluate    the selection update before one of Blender's exporters (heads' glb, fbx, obj, ply, stl)
  <format>    each file: the face glb is read from the evaluated mesh and written by addon.glb
  commit      staging folder moved into place, manifest
Prints the median per photo in ms, and the sum.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("reset", "mesh", "images", "materials", "shape keys", "modifiers", "metadata", "build rest", ".blend",
         "textures", "evaluate", "glb", "fbx", "obj", "ply", "stl", "commit")
HEAD_MODEL = ROOT.parent / "shared" / "data" / "ict_facekit" / "ict_face_model.npz"  # evaluation data, not the product


# ----------------------------------------------------------------------------------------------
# Replies on disk: the frames of one message, length-prefixed

def save_frames(path: Path, frames: list) -> None:
    with open(path, "wb") as handle:
        handle.write(struct.pack("<I", len(frames)))
        for frame in frames:
            data = memoryview(frame).cast("B")
            handle.write(struct.pack("<Q", data.nbytes))
            handle.write(data)


def load_frames(path: Path) -> list:
    data = Path(path).read_bytes()
    (count,), offset, frames = struct.unpack_from("<I", data), 4, []
    for _ in range(count):
        (size,) = struct.unpack_from("<Q", data, offset)
        frames.append(data[offset + 8: offset + 8 + size])
        offset += 8 + size
    return frames


# ----------------------------------------------------------------------------------------------
# Parent: replies from real servers, then the child Blender

def fetch_reply(mode: str, folder: Path, photo: bytes) -> Path:
    from addon.server.process import LocalServer, find_python, free_address
    from addon.wire import protocol
    from addon.wire.client import Client

    data = folder / f"data-{mode}"
    data.mkdir()
    if mode == "head":
        from inference_server.head import store

        os.environ["FACEFORGE_DATA"] = str(data)
        store.install(HEAD_MODEL, log=lambda line: None)
    server = LocalServer(find_python(), free_address(), cwd=str(ROOT), device="cpu",
                         environ={"FACEFORGE_DATA": str(data)})
    server.start(300)
    try:
        with Client(server.address, timeout=300) as client:
            info = client.info()
            message = client.call("reconstruct", {}, {"image": photo})
            whole = client.reconstruction(message)  # heads joined with their model's shared arrays
    finally:
        server.stop()
    payloads = {}
    for face in whole.faces:
        face.meta.pop("model_fingerprint", None)  # the saved reply is whole: nothing to fetch when replayed
        payloads.update(protocol.face_payloads(face.index, face.arrays))
    path = folder / f"{mode}.reply"
    save_frames(path, protocol.encode_reply(message.id, dict(whole.meta, faces=[f.meta for f in whole.faces]),
                                            payloads))
    (folder / f"{mode}.info.json").write_text(json.dumps(info))
    return path


def parent(args) -> int:
    from skimage import data
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "PNG")
    modes = [m for m in args.modes.split(",") if m]
    if "head" in modes and not HEAD_MODEL.exists():
        print(f"no head model at {HEAD_MODEL}: head mode skipped")
        modes.remove("head")
    with tempfile.TemporaryDirectory(prefix="faceforge-profile-") as tmp:
        folder = Path(tmp)
        for mode in modes:
            fetch_reply(mode, folder, buffer.getvalue())
        if args.blender == "python":
            command = [sys.executable, __file__]
        else:
            command = [args.blender, "-b", "--factory-startup", "--python-exit-code", "1", "-P", __file__, "--"]
        command += ["--child", str(folder), "--modes", ",".join(modes), "--formats", args.formats,
                    "--runs", str(args.runs), "--cprofile", str(args.cprofile)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        print("\n".join(line[6:] for line in result.stdout.splitlines() if line.startswith("TABLE ")))
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:])
        return result.returncode


# ----------------------------------------------------------------------------------------------
# Child (inside Blender): the batch's writer with a timer around every step

class Timers:
    def __init__(self):
        self.current: dict = {}
        self.active: set = set()  # steps being timed now: a nested call of the same step is not counted twice

    def wrap(self, owner, name: str, step: str) -> None:
        original = getattr(owner, name)
        timers = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if step in timers.active:
                return original(*args, **kwargs)
            timers.active.add(step)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.active.discard(step)
                timers.current[step] = timers.current.get(step, 0.0) + time.perf_counter() - started

        setattr(owner, name, timed)


def install_timers() -> Timers:
    """Wrap every step of the batch's writer (and each exporter, per format) in a timer."""
    from addon.batch import blender as batch_blender, writer
    from addon.data import meshdata
    from addon.scene import build, faces, heads

    timers = Timers()
    for owner, name, step in [
            (batch_blender.Blender, "reset", "reset"), (faces, "mesh_from_arrays", "mesh"),
            (faces, "face_images", "images"), (faces, "texture_image", "images"), (faces, "skin_material", "materials"),
            (heads, "add_shape_keys", "shape keys"), (faces, "add_modifiers", "modifiers"),
            (meshdata, "idprop_value", "metadata"), (build, "build_reconstruction", "build"),
            (batch_blender.Blender, "save_blend", ".blend"), (writer, "_write_textures", "textures"),
            (faces, "select_only", "evaluate"),
            (batch_blender.Blender, "export", "export"), (writer, "commit", "commit")]:
        if hasattr(owner, name):
            timers.wrap(owner, name, step)
    export = batch_blender.Blender.export

    def export_by_format(self, fmt, path, objects):
        before = dict(timers.current)
        export(self, fmt, path, objects)
        spent = timers.current.pop("export") - before.get("export", 0.0)
        if "export" in before:
            timers.current["export"] = before["export"]
        evaluated = timers.current.get("evaluate", 0.0) - before.get("evaluate", 0.0)
        timers.current[fmt] = timers.current.get(fmt, 0.0) + spent - evaluated

    batch_blender.Blender.export = export_by_format
    return timers


def profile_photo(args, timers: Timers, context, message, formats, profile: bool) -> dict:
    """One write of the reply through the batch's writer: seconds per step (and cProfile's top lines)."""
    from addon.batch import outputs, writer
    from addon.batch.report import PhotoReport

    photo = outputs.Photo(path=Path(args.child) / "astronaut.png", key="astronaut")
    report = PhotoReport(photo=str(photo.path), key=photo.key)
    timers.current = {}
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    writer.write_photo(context, photo, message, outputs.Decision("run", "new", missing_formats=formats), report)
    total = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        stats = io.StringIO()
        pstats.Stats(profiler, stream=stats).sort_stats("cumulative").print_stats(args.cprofile)
        print("\n".join("TABLE " + line for line in stats.getvalue().splitlines()[-args.cprofile - 8:]))
    assert report.status == "ok", report.error
    parts = timers.current
    parts["build rest"] = parts.pop("build", 0.0) - sum(parts.get(s, 0.0) for s in STEPS[1:7])
    parts.pop("export", None)
    parts["total"] = total
    return parts


def child(args) -> int:
    sys.path.insert(0, str(ROOT))
    import bpy

    from addon.data import meshdata
    from addon.batch import blender as batch_blender, cli, writer
    from addon.wire import protocol

    timers = install_timers()
    folder = Path(args.child)
    formats = cli.parse_formats(args.formats)
    blender = batch_blender.Blender()
    tables = {}
    for mode in [m for m in args.modes.split(",") if m]:
        message = protocol.decode(load_frames(folder / f"{mode}.reply"))
        info = json.loads((folder / f"{mode}.info.json").read_text())
        samples: dict = {}
        for run in range(args.runs):
            opts = cli.parse_args(["--input", str(folder), "--output", str(folder / f"out-{mode}-{run}"),
                                   "--formats", args.formats])
            context = writer.RunContext(opts, blender, meshdata.BuildSettings(), info, "profile")
            parts = profile_photo(args, timers, context, message, formats, bool(args.cprofile) and run == args.runs - 1)
            for step, seconds in parts.items():
                samples.setdefault(step, []).append(seconds)
        tables[mode] = {step: statistics.median(values) * 1000 for step, values in samples.items()}
    load = os.getloadavg()
    print(f"TABLE Blender {bpy.app.version_string}, formats {args.formats}, median of {args.runs} runs per photo "
          f"(ms), load average {load[0]:.2f} {load[1]:.2f}, {os.cpu_count()} CPUs")
    modes = list(tables)
    print("TABLE " + f"{'step':<12}" + "".join(f"{m:>10}" for m in modes))
    for step in (*STEPS, "total"):
        if any(step in tables[m] for m in modes):
            print("TABLE " + f"{step:<12}" + "".join(f"{tables[m].get(step, 0.0):>10.1f}" for m in modes))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blender", default="/usr/bin/blender" if Path("/usr/bin/blender").exists() else "python")
    parser.add_argument("--modes", default="face,head")
    parser.add_argument("--formats", default="blend,glb")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="also print the N costliest Python calls of each mode's last run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())
