"""The web page as a user meets it: `python -m inference_server web` as a real process on a free port,
talking to the session's real head server; an HTTP session (its own cookie) per simulated browser."""
from __future__ import annotations

import http.cookiejar
import json
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from .conftest import REPO

# Tight limits, so the limit paths can be tried with the real photos: grace_hopper.jpg (512x600 = 307k
# pixels) is over --max-pixels, the astronaut (512x512) under it.
WEB_ARGS = ("--max-pixels", "300000", "--max-upload-mb", "2", "--keep-minutes", "5")


class WebProcess:
    """``server`` None: the page starts an inference server of its own (its $FACEFORGE_DATA from ``env``)."""

    def __init__(self, server: str | None, log_dir: Path, *extra: str, bind: str = "127.0.0.1:0", env: dict | None = None):
        self.log_path = log_dir / "web.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inference_server", "web", "--bind", bind, *(["--server", server] if server else []),
             "--results", str(log_dir / "results"), *extra], env=env,
            cwd=str(REPO), stdout=subprocess.PIPE, stderr=open(self.log_path, "wb"), text=True)  # noqa: SIM115
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=180)
        except queue.Empty:
            line = ""
        if "http://" not in line:
            self.stop()
            raise RuntimeError(f"the web page did not start: {line!r}; log: {self.log_path.read_text()[-2000:]}")
        self.url = line.split("FaceForge web page: ", 1)[1].strip()
        self.base = self.url.split("?", 1)[0]

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


class Browser:
    """One visitor: its own cookies (so its own session and jobs)."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """``(status, headers, body bytes)``; 4xx and 5xx are answers, not exceptions."""
        req = urllib.request.Request(self.base + path.lstrip("/"), data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def upload(self, files: list, **fields):
        """POST /api/jobs as the page's form does: ``files`` are ``(filename, bytes)``."""
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
                  for key, value in fields.items()]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.json("POST", "api/jobs", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def wait(self, job_id: str, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, view = self.json("GET", f"api/jobs/{job_id}")
            assert status == 200, view
            if view["state"] not in ("queued", "running"):
                return view
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")


@pytest.fixture(scope="session")
def web_page(head_server, tmp_path_factory):
    web = WebProcess(head_server.address, tmp_path_factory.mktemp("web"), *WEB_ARGS)
    try:
        yield web
    finally:
        web.stop()


@pytest.fixture(scope="session")
def astronaut_head(web_page, astronaut_png):
    """The astronaut reconstructed once through the page's API: ``(browser, job id, final view)``."""
    browser = Browser(web_page.base)
    status, view = browser.upload([("astronaut.png", astronaut_png)], geometry="head")
    assert status == 202, view
    return browser, view["id"], browser.wait(view["id"])
