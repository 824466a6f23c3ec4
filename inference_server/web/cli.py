"""``python -m inference_server web``: serve the page. It reaches a running inference server
(``--server``) or starts one of its own, and starts its Blender side (``builder``) beside it."""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from addon.wire import security
from addon.wire.errors import EXIT_HELP, Exit

from .. import limits

log = logging.getLogger("faceforge.web")


def add_web_command(commands) -> None:
    web = commands.add_parser("web", help="serve a web page: upload a photo, turn the head, move its expressions, "
                              "download the files", epilog=EXIT_HELP)
    web.add_argument("--bind", default="127.0.0.1:8080", metavar="HOST:PORT",
                     help="address of the page (default %(default)s: this machine only; any other address gets an "
                          "access token, printed with the page's address)")
    web.add_argument("--token", help="the access token to require (default: none on loopback, a new one elsewhere)")
    web.add_argument("--server", help="a running inference server (default: start one for the page)")
    web.add_argument("--device", default="auto", help="device of the server started for the page")
    web.add_argument("--results", type=Path, help="folder for the results (default: a temporary folder, removed at exit)")
    web.add_argument("--keep-minutes", type=limits.bounded(float, 1, 7 * 24 * 60), default=60.0,
                     help="a result's files are deleted this long after it finished (default %(default)g)")
    web.add_argument("--max-upload-mb", type=limits.bounded(float, 1, 1024), default=40.0,
                     help="largest upload, all photos together (default %(default)g)")
    web.add_argument("--max-photos", type=limits.bounded(int, 1, 6), default=6,
                     help="photos of one person per upload (default %(default)s)")
    web.add_argument("--max-pixels", type=limits.bounded(int, 10_000, 40_000_000), default=40_000_000,
                     help="largest photo, in pixels (default %(default)s)")
    web.add_argument("--timeout", type=float, default=300.0, help="seconds a reconstruction may take")
    security.add_client_arguments(web)


def parse_bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--bind {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def run_web_command(args) -> int:
    from ..security import is_loopback  # the server's own rule; imported here: it loads pyzmq

    try:
        host, port = parse_bind(args.bind)
        security.client_keys_from_args(args)
    except (ValueError, security.KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.USAGE
    token = args.token or (None if is_loopback(host) else secrets.token_urlsafe(18))
    if importlib.util.find_spec("aiohttp") is None:
        print("error: the web page needs aiohttp: pip install 'aiohttp>=3.9' (./run setup installs it)", file=sys.stderr)
        return Exit.SETUP
    results = args.results or Path(tempfile.mkdtemp(prefix="faceforge-web-"))
    results.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        address = args.server
        if address is None:
            server, address = _start_server(args, results)
        return asyncio.run(_serve(args, host, port, token, address, results))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return Exit.SERVER
    except OSError as exc:  # the port is taken, the folder cannot be written
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return Exit.FAILED
    finally:
        if server is not None:
            server.stop()
        if args.results is None:
            shutil.rmtree(results, ignore_errors=True)


def _start_server(args, results: Path):
    from addon.server.process import start_local_server

    log.info("starting an inference server (log %s)", results / "server.log")
    try:
        server = start_local_server(sys.executable, str(results / "server.log"), 180.0, device=args.device)
    except Exception as exc:
        raise RuntimeError(f"the inference server did not start: {exc}") from exc
    log.info("inference server on %s", server.address)
    return server, server.address


async def _serve(args, host: str, port: int, token: str | None, address: str, results: Path) -> int:
    from aiohttp import web

    from .app import WebApp, WebConfig
    from .builder_process import BuilderProcess

    builder = BuilderProcess(address, lambda job, line: None, timeout=args.timeout, server_key=args.server_key,
                             client_key=args.client_key, log_path=str(results / "blender.log"))
    await builder.start()
    config = WebConfig(results=results, token=token, max_upload_mb=args.max_upload_mb, max_photos=args.max_photos,
                       max_pixels=args.max_pixels, keep_s=args.keep_minutes * 60)
    runner = web.AppRunner(WebApp(config, builder).application(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        shown_host = f"[{host}]" if ":" in host else host
        print(f"FaceForge web page: http://{shown_host}:{bound}/" + (f"?token={token}" if token else ""), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await builder.stop()
    return Exit.OK
