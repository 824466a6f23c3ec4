"""The web server's handle on its Blender-side child (``builder``): start it, hand it jobs, hear back.

The child is started again when it dies; the job it was running fails with ``worker_lost`` (the page
says to try again) and the jobs queued behind it are sent to the new child.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Callable

from addon.wire.errors import ErrorCode

log = logging.getLogger("faceforge.web")
READY_TIMEOUT_S = 120.0  # importing bpy and asking the inference server for ``info``


class BuilderProcess:
    """``on_line(job_id, line)`` is called for each progress / done / error line of a job."""

    def __init__(self, server: str, on_line: Callable[[str, dict], None], *, timeout: float = 300.0,
                 server_key: str | None = None, client_key: str | None = None, log_path: str | None = None):
        self.server, self.on_line, self.timeout = server, on_line, timeout
        self.keys = [arg for flag, value in (("--server-key", server_key), ("--client-key", client_key)) if value
                     for arg in (flag, value)]
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.info: dict = {}
        self.sent: dict[str, dict] = {}  # jobs handed to this child and not yet answered, in order
        self._reader: asyncio.Task | None = None
        self._closing = False

    async def start(self) -> dict:
        log_file = open(self.log_path, "ab") if self.log_path else asyncio.subprocess.DEVNULL  # noqa: SIM115
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "inference_server.web.builder", "--server", self.server,
            "--timeout", str(self.timeout), *self.keys,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file)
        if log_file is not asyncio.subprocess.DEVNULL:
            log_file.close()
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), READY_TIMEOUT_S)
            first = json.loads(line) if line else {}
        except (asyncio.TimeoutError, ValueError):
            first = {}
        if "ready" not in first:
            await self.stop()
            raise RuntimeError(first.get("failed") or f"the Blender side did not start (see {self.log_path})")
        self.info = first["ready"]
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self.info

    async def _read(self) -> None:
        process = self.process
        while True:
            line = await process.stdout.readline()
            if not line:
                break
            try:
                message = json.loads(line)
                job = str(message["job"])
            except (ValueError, KeyError, TypeError):
                continue
            if "done" in message or "error" in message:
                self.sent.pop(job, None)
            self.on_line(job, message)
        await process.wait()
        if self._closing:
            return
        log.warning("the Blender side ended (exit %s); starting it again", process.returncode)
        waiting, self.sent = list(self.sent.values()), {}
        if waiting:  # the first was running: the child answers its jobs in order
            self.on_line(str(waiting[0]["job"]), {"error": {
                "code": ErrorCode.WORKER_LOST, "message": "the Blender side stopped while building this; try again"}})
        try:
            await self.start()
            for job in waiting[1:]:
                await self.send(job)
        except Exception as exc:
            log.error("the Blender side cannot start again: %s", exc)
            for job in waiting[1:]:
                self.on_line(str(job["job"]), {"error": {"code": ErrorCode.WORKER_LOST,
                                                         "message": f"the Blender side cannot start: {exc}"}})

    async def send(self, job: dict) -> None:
        if self.process is None or self.process.returncode is not None:
            raise RuntimeError("the Blender side is not running")
        self.sent[str(job["job"])] = job
        await self._write(job)

    async def cancel(self, job_id: str) -> None:
        if job_id in self.sent:
            await self._write({"cancel": job_id})

    async def _write(self, line: dict) -> None:
        self.process.stdin.write((json.dumps(line) + "\n").encode())
        await self.process.stdin.drain()

    async def stop(self) -> None:
        self._closing = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.stdin.close()  # the child's job loop ends at end of input
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
