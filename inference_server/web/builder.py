"""The web page's Blender side: a child process with ``bpy`` that turns uploads into files.

The web server (``app``) holds no models and no Blender: each upload becomes one job line on this
process's stdin; the job is sent to the inference server with the ZeroMQ client (its progress comes
back as lines on stdout), and the reply is built and written by the batch's own writer
(``addon.batch.writer.write_photo``), so the page's .blend / .glb / .fbx / .obj are the batch's files.
One job at a time: Blender's data is one global scene. A ``cancel`` line stops the job in flight.

Lines in (JSON): ``{"job": ID, "photos": [PATH...], "folder": DIR, "key": NAME, "request": {...}}``,
``{"cancel": ID}``. Lines out: ``{"ready": {...info}}``, then per job ``{"job": ID, "progress": {...}}``
and one ``{"job": ID, "done": {...}}`` or ``{"job": ID, "error": {"code", "message"}}``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from addon.wire import protocol
from addon.wire.errors import ErrorCode, ProtocolError

FORMATS = ("glb", "blend", "fbx", "obj")
DEPTH_UNITS_PER_METRE = 100_000  # the depth PNG's 16-bit values: 10 micrometres each (655 mm at most)
_OUT = sys.stdout                # protocol lines only (main() moves everything else to stderr)


def emit(**line) -> None:
    _OUT.write(json.dumps(line) + "\n")
    _OUT.flush()


def depth_png(path: Path, depth: np.ndarray, mask: np.ndarray) -> None:
    """A face's depth map as a 16-bit greyscale PNG: height in front of the deepest face point, 0 outside
    the mask; the scale is written into the file's text (``faceforge:depth``) too."""
    values = np.where(mask, np.clip(np.rint(np.asarray(depth, np.float64) * DEPTH_UNITS_PER_METRE), 1, 65535), 0)
    info = PngImagePlugin.PngInfo()
    info.add_text("faceforge:depth", f"height in metres = value / {DEPTH_UNITS_PER_METRE}; 0 = no face")
    Image.fromarray(values.astype(np.uint16)).save(path, pnginfo=info)


def obj_zip(folder: Path, key: str) -> str:
    """The .obj, its .mtl and the textures in one zip (what an OBJ download needs to open textured)."""
    name = f"{key}_obj.zip"
    members = [folder / f"{key}.obj", folder / f"{key}.mtl", *sorted(folder.glob(f"{key}_face*.png"))]
    with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            if member.exists():
                archive.write(member, member.name)
    return name


def lighting_y_up(meta: dict) -> list | None:
    """The fitted SH lighting (Blender world frame) in glTF's Y-up frame, for the page's light probe:
    the same radiance field re-expanded in the rotated basis (exact: each SH band is closed under rotation)."""
    from addon.wire import sh

    lighting = meta.get("lighting") or {}
    coefficients = np.asarray(lighting.get("sh", ()), np.float64)
    if lighting.get("frame") != "blender world" or coefficients.shape != (sh.COUNT, 3):
        return None
    directions = np.random.default_rng(0).normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)        # glTF frame
    blender = np.stack([directions[:, 0], -directions[:, 2], directions[:, 1]], 1)  # glTF (x, y, z) -> Blender
    radiance = sh.radiance_basis(blender) @ coefficients
    solved, *_ = np.linalg.lstsq(sh.radiance_basis(directions), radiance, rcond=None)
    return solved.round(6).tolist()


class Jobs:
    """Job lines from stdin; a ``cancel`` line sets the event of the job it names (queued or running)."""

    def __init__(self, stream):
        self.queue: queue.Queue = queue.Queue()
        self.cancels: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def cancel_event(self, job: str) -> threading.Event:
        with self.lock:
            return self.cancels.setdefault(job, threading.Event())

    def _read(self, stream) -> None:
        for line in stream:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "cancel" in message:
                self.cancel_event(str(message["cancel"])).set()
            elif "job" in message:
                self.queue.put(message)
        self.queue.put(None)  # the web server went away


class Builder:
    def __init__(self, address: str, timeout: float, keys=None):
        from addon.batch.blender import Blender
        from addon.wire.client import Client

        self.client = Client(address, timeout=timeout, keys=keys)
        self.address, self.timeout = address, timeout
        self.info = self.client.info(timeout=min(30.0, timeout))
        self.blender = Blender()

    def run(self, job: dict, cancel: threading.Event) -> dict:
        from addon.batch.cli import Options
        from addon.batch.inputs import Photo
        from addon.batch.outputs import Decision
        from addon.batch.report import PhotoReport
        from addon.batch.writer import RunContext, write_photo
        from addon.data.meshdata import BuildSettings

        photos = [Path(p) for p in job["photos"]]
        folder, key = Path(job["folder"]), str(job["key"])
        request = dict(job.get("request") or {})
        media = protocol.photo_payloads([p.read_bytes() for p in photos])
        with self._watch_server(cancel) as gone:
            try:
                message = self.client.call("reconstruct", request, media, timeout=self.timeout, cancel=cancel,
                                           on_progress=lambda progress: emit(job=job["job"], progress=progress))
            except ProtocolError as err:
                if gone.is_set():
                    raise ProtocolError(ErrorCode.UNREACHABLE, f"the inference server at {self.address} stopped "
                                                               "answering; start it again and retry") from err
                raise
        message.raise_for_error()
        emit(job=job["job"], progress={"stage": "build", "text": "building the Blender objects and files",
                                       "fraction": 1.0})
        opts = Options(inputs=photos, output=folder, server=self.address, formats=FORMATS, request=request,
                       overwrite=True)
        context = RunContext(opts, self.blender, BuildSettings(), self.info, self.address, self.client.model_arrays)
        photo = Photo(path=photos[0], key=key, members=tuple(photos) if len(photos) > 1 else ())
        report = PhotoReport(photo=str(photos[0]), key=key)
        reconstruction = write_photo(context, photo, message, Decision("run", "new", missing_formats=FORMATS), report)
        if report.status != "ok":
            raise ProtocolError(report.error_code or ErrorCode.INTERNAL, report.error or "writing the files failed")
        return self._extras(folder / key, key, reconstruction, report)

    @contextlib.contextmanager
    def _watch_server(self, cancel: threading.Event, every_s: float = 2.0):
        """While a request waits: when the server stops listening, set the yielded event and cancel, so a dead
        server fails the job in seconds, not at the timeout."""
        from addon.server.process import listening

        gone, done, alive = threading.Event(), threading.Event(), listening(self.address, every_s)

        def watch() -> None:
            while not done.wait(every_s):
                if not alive():
                    gone.set()
                    cancel.set()
                    return
        threading.Thread(target=watch, daemon=True).start()
        try:
            yield gone
        finally:
            done.set()

    def _extras(self, folder: Path, key: str, reconstruction, report) -> dict:
        """The depth PNG and OBJ zip beside the batch's files, and what the page shows of the result."""
        files = [Path(p).name for p in report.outputs]
        faces = []
        for face in sorted(reconstruction.faces, key=lambda f: f.index):
            depth = f"{key}_face{face.index}_depth.png"
            depth_png(folder / depth, face.arrays["depth"], face.arrays["mask"])
            files.append(depth)
            faces.append({"index": face.index, "geometry": face.meta.get("geometry", "face"),
                          "vertices": int(len(face.arrays["vertices"])), "lighting": lighting_y_up(face.meta),
                          "expressions": list(face.meta.get("expressions") or []),
                          "photos": len(face.meta.get("photos") or ()) or 1,  # several photos: the ones fitted
                          "copies": len(face.meta.get("copies") or ())})       # and the copies left out
        files.append(obj_zip(folder, key))
        return {"folder": str(folder), "files": files, "faces": faces,
                "timings_ms": reconstruction.meta.get("timings_ms") or {},
                "image_size": reconstruction.meta.get("image_size")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--server-key")
    parser.add_argument("--client-key")
    args = parser.parse_args(argv)
    from addon.wire import security

    global _OUT  # stdout's descriptor is kept for the protocol; Blender's C and Python prints go to stderr
    _OUT = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    try:
        builder = Builder(args.server, args.timeout, security.client_keys(args.server_key, args.client_key))
    except (ProtocolError, security.KeyFileError, OSError) as exc:
        emit(failed=f"cannot start: {exc}")
        return 1
    emit(ready={"info": builder.info, "blender": ".".join(map(str, builder.blender.version))})
    jobs = Jobs(sys.stdin)
    while (job := jobs.queue.get()) is not None:
        cancel = jobs.cancel_event(str(job["job"]))
        started = time.perf_counter()
        try:
            if cancel.is_set():
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
            done = builder.run(job, cancel)
            done["elapsed_s"] = round(time.perf_counter() - started, 3)
            emit(job=job["job"], done=done)
        except ProtocolError as exc:
            emit(job=job["job"], error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # one job never ends the process
            emit(job=job["job"], error={"code": ErrorCode.INTERNAL, "message": f"{exc.__class__.__name__}: {exc}"})
        with jobs.lock:
            jobs.cancels.pop(str(job["job"]), None)
    builder.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
