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
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import batch_core as core  # noqa: E402  (bpy-free)

FACE_GAP_M = 0.05  # space between the faces of one photo when --face all finds several
STL_THICKNESS_M = 0.003  # the STL is closed (solidified) so it can be printed
STL_SCALE = 1000.0  # STL has no units; slicers read millimetres


def say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def blender_chatter_to_stderr(enabled: bool = True):
    """Send what Blender and its exporters print (C and Python) to stderr, so stdout carries only
    the batch's own lines: one per photo."""
    if not enabled:
        yield
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        flush_c = lambda: libc.fflush(None)  # noqa: E731
    except (OSError, AttributeError):
        flush_c = lambda: None  # noqa: E731
    sys.stdout.flush()
    flush_c()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        flush_c()
        os.dup2(saved, 1)
        os.close(saved)


# ----------------------------------------------------------------------------------------------
# Blender side (bpy imported lazily so --help works anywhere)

class Blender:
    """Scene reset, building through the add-on, saving and version-guarded exports."""

    def __init__(self):
        import bpy

        from addon import scene

        self.bpy = bpy
        self.scene_mod = scene
        self.version = tuple(bpy.app.version)
        # An empty scene: no default cube, camera or light in the outputs.
        bpy.ops.wm.read_factory_settings(use_empty=True)
        self.exporters = {}

    # -- isolation ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Remove everything a previous photo created, so files contain only this photo's faces."""
        data = self.bpy.data
        for collection in (data.objects, data.meshes, data.materials, data.textures, data.images,
                           data.node_groups, data.collections):
            ids = list(collection)
            if ids:
                data.batch_remove(ids)
        for scene in data.scenes:
            for child in list(scene.collection.children):
                scene.collection.children.unlink(child)

    # -- building ----------------------------------------------------------------------------
    def build(self, key: str, faces, settings, metadata: dict) -> list:
        objects, x = [], 0.0
        ordered = sorted(faces, key=lambda f: f.index)
        widths = [float(f.arrays["vertices"][:, 0].max() - f.arrays["vertices"][:, 0].min()) for f in ordered]
        total = sum(widths) + FACE_GAP_M * (len(widths) - 1)
        x = -total / 2
        for face, width in zip(ordered, widths):
            centre = float(face.arrays["vertices"][:, 0].max() + face.arrays["vertices"][:, 0].min()) / 2
            location = (x + width / 2 - centre, 0.0, 0.0) if len(ordered) > 1 else (0.0, 0.0, 0.0)
            obj = self.scene_mod.build_face_object(face, name=f"{key}_face{face.index}", settings=settings,
                                                   location=location, metadata=metadata)
            objects.append(obj)
            x += width + FACE_GAP_M
        return objects

    def select_only(self, objects) -> None:
        bpy = self.bpy
        view_layer = bpy.context.view_layer
        for obj in view_layer.objects:
            obj.select_set(obj in objects)
        if objects:
            view_layer.objects.active = objects[0]

    # -- files -------------------------------------------------------------------------------
    def save_blend(self, path: Path) -> None:
        self.bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True, compress=True)

    def use_texture_files(self, objects, textures: dict) -> None:
        """Point each material's image node at the PNG written next to the exports (after the
        .blend was saved with packed images), so OBJ's MTL names the file and glTF embeds it."""
        bpy = self.bpy
        for obj in objects:
            path = textures.get(obj.name)
            if path is None:
                continue
            image = bpy.data.images.load(str(path), check_existing=False)
            image.name = path.stem
            for slot in obj.material_slots:
                if slot.material is None or slot.material.node_tree is None:
                    continue
                for node in slot.material.node_tree.nodes:
                    if node.type == "TEX_IMAGE" and node.image is not None and not node.image.name.endswith(("_detail", "_depth")):
                        node.image = image

    def _op(self, idname: str):
        module, name = idname.split(".")
        op = getattr(getattr(self.bpy.ops, module), name)
        try:
            op.get_rna_type()
        except KeyError:
            return None
        return op

    def _enable(self, addon: str) -> None:
        import addon_utils

        try:
            addon_utils.enable(addon, default_set=False)
        except Exception:  # not shipped in this version: the caller falls back
            pass

    def exporter(self, fmt: str):
        """``(operator, kwargs)`` for a format, chosen by Blender version (names changed in 3.6/4.x)."""
        if fmt in self.exporters:
            return self.exporters[fmt]
        v = self.version
        candidates = {
            "glb": [("export_scene.gltf", "io_scene_gltf2",
                     dict(export_format="GLB", use_selection=True, export_apply=True, export_texcoords=True,
                          export_materials="EXPORT"))],
            # OBJ: the C++ wm.obj_export replaced the io_scene_obj add-on (removed in 4.0).
            "obj": [("wm.obj_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, export_uv=True, export_normals=True,
                          export_materials=True, path_mode="STRIP"))] if v >= (4, 0, 0) else
                   [("export_scene.obj", "io_scene_obj",
                     dict(use_selection=True, use_mesh_modifiers=True, use_uvs=True, use_normals=True,
                          use_materials=True, path_mode="STRIP", axis_forward="-Z", axis_up="Y")),
                    ("wm.obj_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, export_uv=True, export_normals=True,
                          export_materials=True, path_mode="STRIP"))],
            # PLY: wm.ply_export since 3.6 (io_mesh_ply removed in 4.0).
            "ply": [("wm.ply_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, export_uv=True, export_normals=True))]
                   if v >= (3, 6, 0) else
                   [("export_mesh.ply", "io_mesh_ply",
                     dict(use_selection=True, use_mesh_modifiers=True, use_uv_coords=True, use_normals=True,
                          use_colors=False))],
            # STL: wm.stl_export since 4.1 (io_mesh_stl removed in 4.2). Millimetres for slicers.
            "stl": [("wm.stl_export", None,
                     dict(export_selected_objects=True, apply_modifiers=True, global_scale=STL_SCALE, ascii_format=False))]
                   if v >= (4, 1, 0) else
                   [("export_mesh.stl", "io_mesh_stl",
                     dict(use_selection=True, use_mesh_modifiers=True, global_scale=STL_SCALE, ascii=False,
                          batch_mode="OFF"))],
        }[fmt]
        for idname, addon, kwargs in candidates:
            op = self._op(idname)
            if op is None and addon:
                self._enable(addon)
                op = self._op(idname)
            if op is not None:
                self.exporters[fmt] = (idname, op, kwargs)
                return self.exporters[fmt]
        raise RuntimeError(f"Blender {'.'.join(map(str, v))} has no exporter for {fmt} "
                           f"(tried {', '.join(c[0] for c in candidates)})")

    def export(self, fmt: str, path: Path, objects) -> None:
        idname, op, kwargs = self.exporter(fmt)
        self.select_only(objects)
        extra = []
        if fmt == "stl":  # printable: a closed shell, thickened backwards (the face looks toward -Y)
            for obj in objects:
                mod = obj.modifiers.new("FaceForge print shell", "SOLIDIFY")
                mod.thickness = STL_THICKNESS_M
                mod.offset = 1.0 if self._normals_face_back(obj) else -1.0
                mod.use_rim = True
                mod.use_even_offset = True
                extra.append((obj, mod))
        try:
            result = op(filepath=str(path), **kwargs)
        finally:
            for obj, mod in extra:
                obj.modifiers.remove(mod)
        if "FINISHED" not in result or not path.exists():
            raise RuntimeError(f"{idname} did not write {path.name} (result {sorted(result)})")

    @staticmethod
    def _normals_face_back(obj) -> bool:
        """Solidify thickens against the normals with offset -1; we want the shell behind the face."""
        mesh = obj.data
        if not len(mesh.polygons):
            return False
        total = 0.0
        for poly in mesh.polygons[: min(len(mesh.polygons), 2000)]:
            total += poly.normal.y
        return total > 0  # normals point +Y (away from the viewer): thicken along them


# ----------------------------------------------------------------------------------------------
# One photo

def handle_reply(blender: Blender, photo: core.Photo, message, opts: core.Options, decision: core.Decision,
                 report: core.PhotoReport, settings) -> None:
    """Reply -> objects -> files in a staging folder -> moved into place. Fills ``report``."""
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
    final = core.photo_dir(opts.output, photo)
    staging = core.make_staging(opts.output, photo)
    timings = report.timings_s
    try:
        t = time.perf_counter()
        blender.reset()
        metadata = {"photo": str(photo.path), "batch": True,
                    **{k: v for k, v in reconstruction.meta.items() if k in ("server_version", "image_size", "device")}}
        try:
            objects = blender.build(photo.key, faces, settings, metadata)
        except Exception as exc:
            raise _Stage(core.ERR_BUILD, f"building the objects failed: {exc.__class__.__name__}: {exc}") from exc
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
                    name = core.texture_name(photo.key, face.index)
                    (staging / name).write_bytes(core.png_bytes(face.arrays["texture"]))
                    textures[obj.name] = staging / name
                    files.append(name)
                blender.use_texture_files(objects, textures)
                timings["textures"] = round(time.perf_counter() - t, 4)
            for fmt in others:
                step = f"the .{fmt}"
                t = time.perf_counter()
                blender.export(fmt, staging / f"{photo.key}.{fmt}", objects)
                files += core.output_names(photo.key, [fmt])
                timings[fmt] = round(time.perf_counter() - t, 4)
        except _Stage:
            raise
        except Exception as exc:
            raise _Stage(core.ERR_EXPORT, f"writing {step} failed: "
                                          f"{exc.__class__.__name__}: {exc}") from exc
        missing = [name for name in files if not (staging / name).exists()]
        if missing:
            raise _Stage(core.ERR_EXPORT, f"exporters did not write {', '.join(missing)}")
        manifest = {"status": "ok", "photo": str(photo.path), "key": photo.key, "formats": formats, "files": files,
                    "faces": report.faces, "vertices": report.vertices, "face_details": report.face_details,
                    "request": opts.request_params(), "build": opts.build_settings(),
                    "blender": ".".join(map(str, blender.version)),
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        outputs = core.commit(staging, final, overwrite=opts.overwrite, manifest=manifest)
        report.outputs = [str(p) for p in outputs]
        report.status = "ok"
        if decision.reason.startswith("add formats"):
            report.note = decision.reason
    except _Stage as stage:
        report.fail(stage.code, stage.text)
    finally:
        if staging.exists():
            core.shutil.rmtree(staging, ignore_errors=True)


class _Stage(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


# ----------------------------------------------------------------------------------------------
# The run

def _settings(opts: core.Options):
    from addon.scene import BuildSettings

    return BuildSettings(**opts.build_settings())


def _start_server(opts: core.Options):
    from addon.server_process import LocalServer

    python = core.pick_server_python(opts.python)
    if python is None:
        raise RuntimeError("no Python with torch for the inference server: set FACEFORGE_PYTHON, pass --python, "
                           "create the repo's .venv, or pass --server ADDR")
    address = core.free_tcp_address()
    opts.output.mkdir(parents=True, exist_ok=True)
    log_path = opts.output / ".faceforge-server.log"
    server = LocalServer(python, address, cwd=str(ROOT), log_path=str(log_path), device=opts.device)
    say(f"starting a local server: {python} on {address} (log {log_path})")
    return server, address


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(opts: core.Options) -> int:
    started = time.monotonic()
    summary = core.Summary(opts.summary_path, opts)
    photos, missing = core.discover(opts.inputs, output=opts.output, recursive=opts.recursive)
    if not photos and not missing:
        say(f"error: no photos found in {', '.join(map(str, opts.inputs))}")
        return core.EXIT_USAGE
    opts.output.mkdir(parents=True, exist_ok=True)
    core.clean_stale_staging(opts.output)
    total = len(photos) + len(missing)
    progress = core.Progress(total)
    reports: dict = {}

    def finish(report: core.PhotoReport, name: str, processed: bool = True) -> None:
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
        finish(core.PhotoReport(photo=str(path), key="").fail(core.ERR_UNREADABLE, f"{path} does not exist"), str(path))

    todo, decisions = [], {}
    for photo in photos:
        decision = core.decide(opts.output, photo, opts.formats, opts.overwrite)
        report = core.PhotoReport(photo=str(photo.path), key=photo.key)
        if decision.action == "skip":
            report.status, report.note = "skipped", "already done; --overwrite redoes it"
            man = decision.manifest or {}
            report.faces, report.vertices = int(man.get("faces", 0)), int(man.get("vertices", 0))
            report.face_details = man.get("face_details", [])
            folder = core.photo_dir(opts.output, photo)
            report.outputs = [str(folder / n) for n in man.get("files", [])]
            finish(report, photo.name, processed=False)
        elif decision.action == "conflict":
            finish(report.fail(core.ERR_EXISTS, decision.reason), photo.name, processed=False)
        else:
            todo.append(photo)
            decisions[photo.key] = decision
            reports[photo.key] = report

    exit_code = core.EXIT_OK
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
                server, address = _start_server(opts)
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
            window = core.Window(client, todo, opts.request_params(), jobs=opts.jobs, timeout=opts.timeout,
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
                exit_code = core.EXIT_SERVER
                if server is not None:
                    say("server log (last lines):\n" + server.log_tail(20))
    except _ServerProblem as exc:
        say(f"error: {exc}")
        summary.run["error"] = str(exc)
        for photo in todo:
            report = reports[photo.key]
            if report.status == "pending":
                finish(report.fail("unreachable", str(exc).splitlines()[0]), photo.name)
        exit_code = core.EXIT_SERVER
    except KeyboardInterrupt:
        say("interrupted: stopping")
        summary.run["interrupted"] = True
        for photo in todo:
            report = reports[photo.key]
            if report.status == "pending":
                report.note = "interrupted before it was done"
                summary.add(report)
        exit_code = core.EXIT_INTERRUPTED
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
        summary.finished = exit_code != core.EXIT_INTERRUPTED
        summary.run["elapsed_s"] = round(time.monotonic() - started, 3)
        summary.write()

    counts = summary.counts()
    pending = f", {counts['pending']} not done" if counts.get("pending") else ""
    say(f"done: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed{pending} "
        f"in {core.format_duration(time.monotonic() - started)}; summary {opts.summary_path}")
    if exit_code == core.EXIT_OK and counts["failed"]:
        exit_code = core.EXIT_PHOTOS_FAILED
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
        opts = core.parse_args(core.script_argv(sys.argv if argv is None else argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    missing = core.missing_modules()
    if missing:
        say(core.setup_hint(missing))
        return core.EXIT_SETUP
    return run(opts)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True) if hasattr(sys.stdout, "reconfigure") else None
    sys.exit(main())
