"""The web page's HTTP side (aiohttp): the page, a small JSON API, uploads, progress and downloads.

Why aiohttp: one well-kept dependency that serves static files, parses multipart uploads with a size
bound and runs the few slow things (the Blender-side child's pipe) without threads.

API (JSON; the browser's session cookie decides whose jobs it sees):
``GET /api/info`` limits and choices; ``POST /api/jobs`` (multipart: ``photo`` x N, ``geometry``,
``refine``) -> 202 ``{id}``; ``GET /api/jobs/{id}`` state and progress; ``GET /api/jobs/{id}/result``
200 or the upload's 4xx; ``POST /api/jobs/{id}/cancel``; ``GET /api/jobs/{id}/files/{name}``.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web
from PIL import Image

from addon.wire import options
from addon.wire.errors import ErrorCode, ProtocolError

from .builder_process import BuilderProcess
from .jobs import CANCELLED, DONE, FAILED, FINISHED, RUNNING, Job, JobStore, Refused

log = logging.getLogger("faceforge.web")
STATIC = Path(__file__).parent / "static"
SESSION_COOKIE, TOKEN_COOKIE = "faceforge_session", "faceforge_token"
IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
PAGE_OPTIONS = ("geometry", "refine")  # what the page lets a user choose; the rest are the server's defaults
SERVER_SHARE = 0.9                     # of the progress bar: the reconstruction; the rest is writing files
CONTENT_TYPES = {".glb": "model/gltf-binary", ".blend": "application/x-blender", ".fbx": "application/octet-stream",
                 ".zip": "application/zip", ".png": "image/png", ".csv": "text/csv"}


@dataclass
class WebConfig:
    results: Path                 # where jobs' folders go
    token: str | None = None      # required of every request when set (?token= once, then a cookie)
    max_upload_mb: float = 40.0
    max_photos: int = 6
    max_pixels: int = 40_000_000
    keep_s: float = 3600.0        # finished results are deleted this long after they finished
    per_session: int = 2          # reconstructions one browser session may have waiting or running


def within_server_limits(config: WebConfig, info: dict) -> WebConfig:
    """The page's limits lowered to the inference server's own ceilings (its ``info``): an upload the
    page takes is never one the server refuses for its size."""
    limits, defaults = info.get("limits") or {}, info.get("defaults") or {}
    message_mb = limits.get("max_message_bytes", float("inf")) / 2**20
    return replace(config, max_pixels=min(config.max_pixels, limits.get("max_pixels", config.max_pixels)),
                   max_photos=min(config.max_photos, defaults.get("max_photos", config.max_photos)),
                   max_upload_mb=min(config.max_upload_mb, message_mb))


def _csp(html: str) -> str:
    """No inline script runs but the page's import map (allowed by its hash); everything from this origin.
    ``blob:``: glTF textures are decoded from blob URLs."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                      for body in re.findall(r"<script type=\"importmap\">(.*?)</script>", html, re.S))
    return (f"default-src 'self'; script-src 'self' {hashes}; img-src 'self' blob: data:; "
            "connect-src 'self' blob: data:; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def file_key(filename: str | None) -> str:
    """The downloads' file name stem: the first photo's, in letters, digits, ``-`` and ``_`` only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(filename or "").stem).strip("_")[:48]
    return stem or "faceforge"


def json_error(status: int, message: str, code: str = "") -> web.Response:
    return web.json_response({"error": {"code": code or str(status), "message": message}}, status=status)


class WebApp:
    def __init__(self, config: WebConfig, builder: BuilderProcess):
        self.config = within_server_limits(config, builder.info.get("info", {}))
        self.store = JobStore(config.results, keep_s=config.keep_s, per_owner=config.per_session)
        self.builder = builder
        builder.on_line = self.on_line
        self.page = (STATIC / "index.html").read_text(encoding="utf-8")
        self.csp = _csp(self.page)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.guard], client_max_size=int(self.config.max_upload_mb * 2**20))
        app.router.add_get("/", self.index)
        app.router.add_static("/static", STATIC, follow_symlinks=False)
        app.router.add_get("/api/info", self.info)
        app.router.add_post("/api/jobs", self.upload)
        app.router.add_get("/api/jobs/{id}", self.status)
        app.router.add_get("/api/jobs/{id}/result", self.result)
        app.router.add_post("/api/jobs/{id}/cancel", self.cancel)
        app.router.add_get("/api/jobs/{id}/files/{name}", self.download)
        app.on_startup.append(self._start_expiry)
        return app

    # -- every request ------------------------------------------------------------------------
    @web.middleware
    async def guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Access token, the session cookie, security headers, and errors as JSON (never a traceback)."""
        token = self.config.token
        given = request.query.get("token") or request.cookies.get(TOKEN_COOKIE) or \
            request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token and not secrets.compare_digest(given.encode(), token.encode()):
            return json_error(401, "this page needs its access token: open the address the web command printed")
        session = request.cookies.get(SESSION_COOKIE, "")
        new_session = not re.fullmatch(r"[A-Za-z0-9_-]{22,64}", session)
        request["owner"] = secrets.token_urlsafe(24) if new_session else session
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # unknown routes, wrong methods, aiohttp's own size checks
            response = json_error(exc.status, exc.reason)
        except Exception:
            log.exception("web request %s %s failed", request.method, request.path)
            response = json_error(500, "internal error; the server log has the details", ErrorCode.INTERNAL)
        if new_session:
            response.set_cookie(SESSION_COOKIE, request["owner"], httponly=True, samesite="Strict")
        if token and request.query.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        response.headers.update({"Content-Security-Policy": self.csp, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
        return response

    # -- the page ----------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")

    async def info(self, request: web.Request) -> web.Response:
        server = self.builder.info.get("info", {})
        return web.json_response({
            "max_upload_mb": round(self.config.max_upload_mb, 1), "max_photos": self.config.max_photos,
            "max_pixels": self.config.max_pixels, "keep_minutes": round(self.config.keep_s / 60, 1),
            "options": {name: {"choices": list(options.BY_NAME[name].choices), "default": options.BY_NAME[name].default,
                               "help": options.BY_NAME[name].help} for name in PAGE_OPTIONS},
            "server": {key: server.get(key) for key in ("server_version", "device", "protocol_version")},
            "blender": self.builder.info.get("blender")})

    # -- jobs ----------------------------------------------------------------------------------
    async def upload(self, request: web.Request) -> web.Response:
        limit_mb = self.config.max_upload_mb
        if (request.content_length or 0) > limit_mb * 2**20:
            return json_error(413, f"the upload is larger than this server's {limit_mb:g} MB", ErrorCode.TOO_LARGE)
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"the upload is larger than this server's {limit_mb:g} MB", ErrorCode.TOO_LARGE)
        except ValueError:
            return json_error(400, "the upload is not a form with photos", ErrorCode.BAD_REQUEST)
        files = [f for f in form.getall("photo", []) if isinstance(f, web.FileField)]
        if not files:
            return json_error(400, "no photo in the upload: choose or drop a JPEG, PNG or WebP photo", ErrorCode.BAD_REQUEST)
        if len(files) > self.config.max_photos:
            return json_error(413, f"{len(files)} photos: at most {self.config.max_photos} photos of one person",
                              ErrorCode.TOO_LARGE)
        photos = []
        for upload in files:
            data = upload.file.read()
            try:
                photos.append((await asyncio.to_thread(self._image_suffix, data), data))
            except ProtocolError as err:
                status = 413 if err.code == ErrorCode.TOO_LARGE else 400
                return json_error(status, f"{upload.filename or 'the file'}: {err.message}", err.code)
        try:
            request_options = {name: options.BY_NAME[name].validate(form[name]) for name in PAGE_OPTIONS if name in form}
            job = self.store.create(request["owner"], photos, request_options)
        except ProtocolError as err:
            return json_error(400, err.message, err.code)
        except Refused as refused:
            return json_error(refused.status, refused.message, ErrorCode.BUSY)
        except OSError as exc:  # a full disk: the upload could not be stored
            log.error("storing an upload failed: %s", exc)
            return json_error(507, f"the server cannot store the upload ({exc.strerror or exc}); try again later",
                              ErrorCode.INTERNAL)
        try:
            await self.builder.send({"job": job.id, "photos": [str(p) for p in job.photos], "folder": str(job.folder),
                                     "key": file_key(files[0].filename), "request": job.request})
        except (RuntimeError, OSError) as exc:
            self.store.finish(job, FAILED, error={"code": ErrorCode.UNREACHABLE, "message": str(exc)})
        return web.json_response(job.view(), status=202)

    def _image_suffix(self, data: bytes) -> str:
        """The file's suffix by its content, if it is an image the server reads, within the pixel limit (by
        its header) and whole (decoded here, off the event loop: a damaged photo is the upload's 400)."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
                if kind in IMAGE_FORMATS and width * height <= self.config.max_pixels:
                    image.load()
        except Image.DecompressionBombError:
            raise ProtocolError(ErrorCode.TOO_LARGE, "the image has too many pixels") from None
        except Exception as exc:
            damaged = "truncated" in str(exc) or "broken" in str(exc)
            raise ProtocolError(ErrorCode.BAD_IMAGE, "the image is damaged (cut short or corrupt)" if damaged else
                                "not an image this server reads (JPEG, PNG, WebP, BMP, TIFF)") from None
        if kind not in IMAGE_FORMATS:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"{kind} images are not read here (JPEG, PNG, WebP, BMP, TIFF)")
        if width * height > self.config.max_pixels:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{width}x{height} is over this server's "
                                                     f"{self.config.max_pixels / 1e6:g} megapixels")
        return IMAGE_FORMATS[kind]

    def _job(self, request: web.Request) -> Job:
        job = self.store.get(request["owner"], request.match_info["id"])
        if job is None:
            raise web.HTTPNotFound(reason="no such result (results are deleted "
                                          f"{self.config.keep_s / 60:g} minutes after they finish)")
        return job

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self._job(request).view())

    async def result(self, request: web.Request) -> web.Response:
        job = self._job(request)
        return web.json_response(job.view(), status=job.result_status())

    async def cancel(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job.state not in FINISHED:
            await self.builder.cancel(job.id)
        return web.json_response(job.view(), status=202)

    async def download(self, request: web.Request) -> web.StreamResponse:
        job = self._job(request)
        name = request.match_info["name"]
        path = job.file(name)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(reason=f"{name!r} is not a file of this result")
        disposition = "inline" if path.suffix == ".glb" else "attachment"
        return web.FileResponse(path, headers={"Content-Type": CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
                                               "Content-Disposition": f'{disposition}; filename="{name}"'})

    # -- the Blender side's lines ----------------------------------------------------------------
    def on_line(self, job_id: str, line: dict) -> None:
        job = self.store.jobs.get(job_id)
        if job is None or job.state in FINISHED:
            return
        if "progress" in line:
            progress = line["progress"]
            fraction = float(progress.get("fraction", 0.0))
            share = fraction * SERVER_SHARE if progress.get("stage") != "build" else SERVER_SHARE + 0.05
            job.state = RUNNING
            job.progress = {"stage": str(progress.get("stage", "")), "text": str(progress.get("text", "")),
                            "fraction": round(min(max(share, job.progress.get("fraction", 0.0)), 1.0), 4)}
        elif "done" in line:
            self.store.finish(job, DONE, result=line["done"])
        elif "error" in line:
            error = line["error"]
            state = CANCELLED if error.get("code") == ErrorCode.CANCELLED else FAILED
            self.store.finish(job, state, error={"code": str(error.get("code")), "message": str(error.get("message"))})

    async def _start_expiry(self, app: web.Application) -> None:
        async def expire_forever():
            while True:
                await asyncio.sleep(min(30.0, self.config.keep_s / 4))
                self.store.expire()
        app["expiry"] = asyncio.get_running_loop().create_task(expire_forever())
