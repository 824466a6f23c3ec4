"""Headless batch: folders of photos -> .blend / .glb / .obj / .ply / .stl, one folder per photo.

    blender -b --python-exit-code 1 -P scripts/batch.py -- --input PHOTO_OR_DIR [...] --output DIR \\
        [--server ADDR | --start-server] [--face largest|all|N] [--formats blend,glb,obj,ply,stl] \\
        [--resolution N] [--smooth N] [--detail M] [--overwrite] [--jobs N]

    python scripts/batch.py -- ...          (same, with ``bpy`` from PyPI)

Runs in Blender 3.4 through 5.0 and with the ``bpy`` module. Meshes, materials and modifiers come
from the add-on (``addon.scene.build_face_object``); without ``--server`` a local inference server
is started (``addon.server_process.LocalServer``) and stopped at the end, also on errors and Ctrl-C.
``bpy.app.timers`` never fire while a background script blocks, so requests use the synchronous
client with a deadline each. See scripts/README.md and ``--help`` for outputs and exit codes.

This file runs the batch; the rest lives next to it (``scripts/`` is put on ``sys.path`` below,
since Blender adds nothing): ``batch_options`` (command line), ``batch_outputs`` (photos, output
folders, resume), ``batch_window`` (requests in flight), ``batch_progress`` (reports, summary,
progress line), ``batch_server`` (server Python, setup check) and ``batch_blender`` (scene, exports).
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from batch_blender import Blender, blender_chatter_to_stderr  # noqa: E402  (bpy imported lazily)
from batch_options import (EXIT_INTERRUPTED, EXIT_OK, EXIT_PHOTOS_FAILED, EXIT_SERVER, EXIT_SETUP,  # noqa: E402
                           EXIT_USAGE, Options, parse_args, script_argv)
from batch_outputs import (Decision, Photo, clean_stale_staging, commit, decide, discover,  # noqa: E402
                           make_staging, output_names, photo_dir, texture_name)
from batch_progress import (ERR_BUILD, ERR_EXISTS, ERR_EXPORT, ERR_UNREADABLE, PhotoReport,  # noqa: E402
                            Progress, Summary, format_duration)
from batch_server import missing_modules, pick_server_python, setup_hint  # noqa: E402
from batch_window import Window  # noqa: E402


def say(text: str) -> None:
    print(text, flush=True)


# ----------------------------------------------------------------------------------------------
# One photo

def handle_reply(blender: Blender, photo: Photo, message, opts: Options, decision: Decision,
                 report: PhotoReport, settings) -> None:
    """Reply -> objects -> files in a staging folder -> moved into place. Fills ``report``."""
    from addon.photo import png_bytes
    from addon.wire.client import Reconstruction

    reconstruction = Reconstruction.from_message(message)  # raises ProtocolError on error replies
    faces = reconstruction.faces
    if not faces:
        report.fail("no_face", "the server found no face")
        return
    report.faces = len(faces)
    report.vertices = int(sum(len(f.arrays["vertices"]) for f in faces))
    report.triangles = int(sum(len(f.arrays["faces"]) for f in faces))
    report.face_details = [{"index": f.index, "vertices": int(len(f.arrays["vertices"])),
                            "triangles": int(len(f.arrays["faces"])),
                            **{k: f.meta[k] for k in ("score", "box") if k in f.meta}} for f in faces]
    report.server_timings_ms = dict(reconstruction.meta.get("timings_ms") or {})
    formats = list(decision.missing_formats)
    final = photo_dir(opts.output, photo)
    staging = make_staging(opts.output, photo)
    timings = report.timings_s
    try:
        t = time.perf_counter()
        blender.reset()
        metadata = {"photo": str(photo.path), "batch": True,
                    **{k: v for k, v in reconstruction.meta.items() if k in ("server_version", "image_size", "device")}}
        try:
            objects = blender.build(photo.key, faces, settings, metadata)
        except Exception as exc:
            raise _Stage(ERR_BUILD, f"building the objects failed: {exc.__class__.__name__}: {exc}") from exc
        timings["build"] = round(time.perf_counter() - t, 4)
        files = []
        step = "the .blend"
        try:
            if "blend" in formats:
                t = time.perf_counter()
                blender.save_blend(staging / f"{photo.key}.blend")
                files.append(f"{photo.key}.blend")
                timings["blend"] = round(time.perf_counter() - t, 4)
            others = [f for f in formats if f != "blend"]
            if others:
                step = "the textures"
                t = time.perf_counter()
                textures = {}
                for obj, face in zip(objects, sorted(faces, key=lambda f: f.index)):
                    name = texture_name(photo.key, face.index)
                    (staging / name).write_bytes(png_bytes(face.arrays["texture"]))
                    textures[obj.name] = staging / name
                    files.append(name)
                blender.use_texture_files(objects, textures)
                timings["textures"] = round(time.perf_counter() - t, 4)
            for fmt in others:
                step = f"the .{fmt}"
                t = time.perf_counter()
                blender.export(fmt, staging / f"{photo.key}.{fmt}", objects)
                files += output_names(photo.key, [fmt])
                timings[fmt] = round(time.perf_counter() - t, 4)
        except _Stage:
            raise
        except Exception as exc:
            raise _Stage(ERR_EXPORT, f"writing {step} failed: "
                                          f"{exc.__class__.__name__}: {exc}") from exc
        missing = [name for name in files if not (staging / name).exists()]
        if missing:
            raise _Stage(ERR_EXPORT, f"exporters did not write {', '.join(missing)}")
        manifest = {"status": "ok", "photo": str(photo.path), "key": photo.key, "formats": formats, "files": files,
                    "faces": report.faces, "vertices": report.vertices, "face_details": report.face_details,
                    "request": opts.request_params(), "build": opts.build_settings(),
                    "blender": ".".join(map(str, blender.version)),
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        outputs = commit(staging, final, overwrite=opts.overwrite, manifest=manifest)
        report.outputs = [str(p) for p in outputs]
        report.status = "ok"
        if decision.reason.startswith("add formats"):
            report.note = decision.reason
    except _Stage as stage:
        report.fail(stage.code, stage.text)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class _Stage(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


# ----------------------------------------------------------------------------------------------
# The run

def _settings(opts: Options):
    from addon.scene import BuildSettings

    return BuildSettings(**opts.build_settings())


def _start_server(opts: Options):
    from addon.server_process import LocalServer, free_address

    python = pick_server_python(opts.python)
    if python is None:
        raise RuntimeError("no Python with torch for the inference server: set FACEFORGE_PYTHON, pass --python, "
                           "create the repo's .venv, or pass --server ADDR")
    opts.output.mkdir(parents=True, exist_ok=True)
    log_path = opts.output / ".faceforge-server.log"
    server = LocalServer(python, free_address(), cwd=str(ROOT), log_path=str(log_path), device=opts.device)
    say(f"starting a local server: {python} on {server.address} (log {log_path})")
    return server


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(opts: Options) -> int:
    started = time.monotonic()
    summary = Summary(opts.summary_path, opts)
    photos, missing = discover(opts.inputs, output=opts.output, recursive=opts.recursive)
    if not photos and not missing:
        say(f"error: no photos found in {', '.join(map(str, opts.inputs))}")
        return EXIT_USAGE
    opts.output.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(opts.output)
    total = len(photos) + len(missing)
    progress = Progress(total)
    reports: dict = {}

    def finish(report: PhotoReport, name: str, processed: bool = True) -> None:
        summary.add(report)
        if report.status == "ok":
            detail = f"{report.faces} face{'s' if report.faces != 1 else ''}, {report.vertices} vertices"
            if report.note:
                detail += f", {report.note}"
        elif report.status == "skipped":
            detail = report.note or "already done"
        else:
            detail = f"{report.error_code}: {report.error}"
        say(progress.line(name, report.status, detail, processed=processed))
        summary.write()

    for path in missing:
        finish(PhotoReport(photo=str(path), key="").fail(ERR_UNREADABLE, f"{path} does not exist"), str(path))

    todo, decisions = [], {}
    for photo in photos:
        decision = decide(opts.output, photo, opts.formats, opts.overwrite)
        report = PhotoReport(photo=str(photo.path), key=photo.key)
        if decision.action == "skip":
            report.status, report.note = "skipped", "already done; --overwrite redoes it"
            man = decision.manifest or {}
            report.faces, report.vertices = int(man.get("faces", 0)), int(man.get("vertices", 0))
            report.face_details = man.get("face_details", [])
            folder = photo_dir(opts.output, photo)
            report.outputs = [str(folder / n) for n in man.get("files", [])]
            finish(report, photo.name, processed=False)
        elif decision.action == "conflict":
            finish(report.fail(ERR_EXISTS, decision.reason), photo.name, processed=False)
        else:
            todo.append(photo)
            decisions[photo.key] = decision
            reports[photo.key] = report

    exit_code = EXIT_OK
    server = None
    client = None
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is None:
                continue
            try:
                previous[sig] = signal.signal(sig, _interrupt)
            except (ValueError, OSError, AttributeError):
                pass
        if todo:
            from addon.wire.client import Client
            from addon.wire.protocol import ProtocolError

            address = opts.server
            if address is None:
                server = _start_server(opts)
                address = server.address
                t = time.perf_counter()
                try:
                    info = server.start(opts.server_timeout)
                except Exception as exc:
                    raise _ServerProblem(f"the local server did not start: {exc}") from exc
                summary.run["server_start_s"] = round(time.perf_counter() - t, 3)
            client = Client(address, timeout=opts.timeout)
            if server is None:
                try:
                    info = client.info(timeout=min(30.0, opts.timeout))
                except ProtocolError as exc:
                    raise _ServerProblem(f"server {address}: {exc}") from exc
            summary.run.update(server=address, server_info=info if isinstance(info, dict) else {},
                               started_server=server is not None)
            say(f"server {address} ready ({(info or {}).get('device', '?')}); "
                f"{len(todo)} photo(s) to do, {total - len(todo)} skipped or failed up front; jobs {opts.jobs}")

            with blender_chatter_to_stderr(not opts.verbose):
                blender = Blender()
            summary.run["blender"] = ".".join(map(str, blender.version))
            settings = _settings(opts)
            progress.begin()
            alive = (lambda: server.running) if server is not None else _external_alive(address)
            window = Window(client, todo, opts.request_params(), jobs=opts.jobs, timeout=opts.timeout,
                                 alive=alive)
            for photo, message, error in window.events():
                report = reports[photo.key]
                t = time.perf_counter()
                if error is not None:
                    report.fail(*error)
                else:
                    try:
                        with blender_chatter_to_stderr(not opts.verbose):
                            handle_reply(blender, photo, message, opts, decisions[photo.key], report, settings)
                    except ProtocolError as exc:
                        report.fail(exc.code, exc.message)
                    except Exception as exc:  # one photo never stops the batch
                        report.fail("internal", f"{exc.__class__.__name__}: {exc}")
                        traceback.print_exc()
                report.timings_s["handle"] = round(time.perf_counter() - t, 4)
                finish(report, photo.name)
            summary.run["max_in_flight"] = window.max_in_flight
            if window.aborted is not None:
                exit_code = EXIT_SERVER
                if server is not None:
                    say("server log (last lines):\n" + server.log_tail(20))
    except _ServerProblem as exc:
        say(f"error: {exc}")
        summary.run["error"] = str(exc)
        for photo in todo:
            report = reports[photo.key]
            if report.status == "pending":
                finish(report.fail("unreachable", str(exc).splitlines()[0]), photo.name)
        exit_code = EXIT_SERVER
    except KeyboardInterrupt:
        say("interrupted: stopping")
        summary.run["interrupted"] = True
        for photo in todo:
            report = reports[photo.key]
            if report.status == "pending":
                report.note = "interrupted before it was done"
                summary.add(report)
        exit_code = EXIT_INTERRUPTED
    finally:
        if client is not None:
            client.close()
        if server is not None:
            try:
                server.stop()
            except Exception as exc:
                say(f"warning: stopping the server: {exc}")
        for sig, handler in previous.items():
            try:  # a handler installed from C reads back as None: restore the default then
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (TypeError, ValueError, OSError):
                pass
        summary.finished = exit_code != EXIT_INTERRUPTED
        summary.run["elapsed_s"] = round(time.monotonic() - started, 3)
        summary.write()

    counts = summary.counts()
    pending = f", {counts['pending']} not done" if counts.get("pending") else ""
    say(f"done: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed{pending} "
        f"in {format_duration(time.monotonic() - started)}; summary {opts.summary_path}")
    if exit_code == EXIT_OK and counts["failed"]:
        exit_code = EXIT_PHOTOS_FAILED
    return exit_code


class _ServerProblem(Exception):
    pass


def _external_alive(address: str, every_s: float = 5.0):
    """For --server: whether something still listens at a tcp:// address (checked at most every
    ``every_s``), so a server that dies mid-run fails the batch at once instead of after --timeout."""
    from addon.server_process import tcp_in_use

    if not address.startswith("tcp://"):
        return lambda: True
    state = {"checked": 0.0, "alive": True}

    def alive() -> bool:
        now = time.monotonic()
        if now - state["checked"] >= every_s:
            state["checked"], state["alive"] = now, tcp_in_use(address, timeout=1.0)
        return state["alive"]

    return alive


def main(argv=None) -> int:
    try:
        opts = parse_args(script_argv(sys.argv if argv is None else argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    missing = missing_modules()
    if missing:
        say(setup_hint(missing))
        return EXIT_SETUP
    return run(opts)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True) if hasattr(sys.stdout, "reconfigure") else None
    sys.exit(main())
