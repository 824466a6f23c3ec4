"""One photo's reply -> objects -> files: the objects come from the add-on's own builder
(``addon.scene.build.build_reconstruction``, so names, placement and metadata match the panel's), the
files are written into a staging folder and moved into place when all of them exist. A video's head is
animated in every format that carries animation (.blend, .glb, .fbx) and adds a Live Link Face .csv."""
from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import meshdata
from ..data.animation import has_performance
from ..data.arkit import write_csv
from ..wire.errors import ErrorCode, ProtocolError
from .cli import Options
from .inputs import Photo, shown
from .outputs import Decision, commit, make_staging, output_names, photo_dir, texture_name
from .report import ERR_BUILD, ERR_EXPORT, PhotoReport


@dataclass
class RunContext:
    """What every photo of a run shares: the options, the Blender session, the build settings and
    the server's ``info`` reply (fetched once per run, recorded in every object's metadata)."""

    opts: Options
    blender: object          # blender.Blender
    settings: object         # meshdata.BuildSettings
    info: dict
    address: str
    model_arrays: Callable | None = None  # client.Client.model_arrays: what a head reply names, not carries


class _Stage(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


def handle_reply(run: RunContext, photo: Photo, message, decision: Decision, report: PhotoReport) -> None:
    """``write_photo``, with any failure recorded in ``report``: one photo never stops the batch."""
    started = time.perf_counter()
    try:
        write_photo(run, photo, message, decision, report)
    except ProtocolError as exc:
        report.fail(exc.code, exc.message)
    except Exception as exc:
        report.fail(ErrorCode.INTERNAL, f"{exc.__class__.__name__}: {exc}")
        traceback.print_exc()
    report.timings_s["handle"] = round(time.perf_counter() - started, 4)


def write_photo(run: RunContext, photo: Photo, message, decision: Decision, report: PhotoReport):
    """Reply -> objects -> files in a staging folder -> moved into place. Fills ``report`` and returns the
    decoded reply (``client.Reconstruction``) for callers that show more of it; an error reply raises
    ``ProtocolError``."""
    from ..wire.client import Reconstruction

    reconstruction = Reconstruction.from_message(message, run.model_arrays)
    if not reconstruction.faces:
        report.fail(ErrorCode.NO_FACE, "the server found no face")
        return reconstruction
    _describe(report, reconstruction)
    staging = make_staging(run.opts.output, photo)
    try:
        objects = _build(run, photo, reconstruction, report)
        files = _write_files(run, photo, reconstruction, objects, staging, list(decision.missing_formats), report)
        manifest = {"status": "ok", "photo": shown(photo.path), "key": photo.key, "formats": list(decision.missing_formats),
                    "files": files, "faces": report.faces, "vertices": report.vertices,
                    "face_details": report.face_details, "request": run.opts.request, "build": run.opts.build,
                    "blender": ".".join(map(str, run.blender.version)),
                    "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        outputs = commit(staging, photo_dir(run.opts.output, photo), overwrite=run.opts.overwrite, manifest=manifest)
        report.outputs = [str(p) for p in outputs]
        report.status = "ok"
        if decision.reason.startswith("add formats"):
            report.note = decision.reason
    except _Stage as stage:
        report.fail(stage.code, stage.text)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return reconstruction


def _describe(report: PhotoReport, reconstruction) -> None:
    faces = reconstruction.faces
    report.faces = len(faces)
    report.vertices = int(sum(len(f.arrays["vertices"]) for f in faces))
    report.triangles = sum(meshdata.triangle_count(f.arrays) for f in faces)
    report.face_details = [{"index": f.index, "vertices": int(len(f.arrays["vertices"])),
                            "triangles": meshdata.triangle_count(f.arrays), "geometry": f.meta.get("geometry", "face"),
                            **{k: f.meta[k] for k in ("score", "box", "depth_backend", "copies") if k in f.meta},
                            **({"photos": len(f.meta["photos"])} if "photos" in f.meta else {}),
                            **({"video_frames": f.meta["video"]["frames"]} if "video" in f.meta else {})}
                           for f in faces]
    report.server_timings_ms = dict(reconstruction.meta.get("timings_ms") or {})


def _build(run: RunContext, photo: Photo, reconstruction, report: PhotoReport) -> list:
    from ..scene.build import build_reconstruction

    started = time.perf_counter()
    run.blender.reset()
    source = shown(photo.path)  # Blender's names and properties must be valid UTF-8: a non-UTF-8 name is escaped
    metadata = meshdata.reconstruction_metadata(reconstruction.meta, run.info, source, run.opts.request,
                                                batch=True, server_address=run.address)
    try:
        objects = build_reconstruction(reconstruction, photo=source, settings=run.settings, metadata=metadata)
    except Exception as exc:
        raise _Stage(ERR_BUILD, f"building the objects failed: {exc.__class__.__name__}: {exc}") from exc
    report.timings_s["build"] = round(time.perf_counter() - started, 4)
    return objects


def _write_files(run: RunContext, photo: Photo, reconstruction, objects: list, staging: Path, formats: list,
                 report: PhotoReport) -> list:
    """The .blend first (textures packed), then the PNG textures the other formats point at, then
    those formats. Returns the file names written."""
    files, timings, step = [], report.timings_s, "the .blend"
    try:
        if "blend" in formats:
            started = time.perf_counter()
            run.blender.save_blend(staging / f"{photo.key}.blend")
            files.append(f"{photo.key}.blend")
            timings["blend"] = round(time.perf_counter() - started, 4)
        others = [f for f in formats if f != "blend"]
        if others:
            step = "the textures"
            started = time.perf_counter()
            files += _write_textures(run, photo.key, reconstruction, objects, staging)
            timings["textures"] = round(time.perf_counter() - started, 4)
        for fmt in others:
            step = f"the .{fmt}"
            started = time.perf_counter()
            run.blender.export(fmt, staging / f"{photo.key}.{fmt}", objects)
            files += output_names(photo.key, [fmt])
            timings[fmt] = round(time.perf_counter() - started, 4)
        for face in reconstruction.faces:  # a video's head: its performance as facial-capture tools read it
            if has_performance(face.arrays):
                step = "the .csv"
                write_csv(staging / f"{photo.key}.csv", face.arrays, face.meta["video"]["fps"], face.meta["expressions"])
                files.append(f"{photo.key}.csv")
    except Exception as exc:
        raise _Stage(ERR_EXPORT, f"writing {step} failed: {exc.__class__.__name__}: {exc}") from exc
    missing = [name for name in files if not (staging / name).exists()]
    if missing:
        raise _Stage(ERR_EXPORT, f"exporters did not write {', '.join(missing)}")
    return files


def _write_textures(run: RunContext, key: str, reconstruction, objects: list, staging: Path) -> list:
    from ..scene import faces

    textures, names = {}, []
    replies = sorted(reconstruction.faces, key=lambda f: f.index)  # the order build_reconstruction made objects in
    for obj, face in zip(objects, replies):
        name = texture_name(key, face.index)
        (staging / name).write_bytes(faces.png_of(faces.texture_of(obj)))  # the packed PNG: encoded once
        textures[obj.name] = staging / name
        names.append(name)
    run.blender.use_texture_files(objects, textures)
    return names
