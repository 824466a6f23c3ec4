"""The web page's jobs (no aiohttp, no Blender): who owns which upload, where it stands, when it expires.

A job belongs to the browser session that made it; another session asking for it gets the same answer
as for a job that never existed, so results cannot be found by guessing. Finished jobs are deleted
(files included) ``keep_s`` after they finished; queued and running ones never expire.
"""
from __future__ import annotations

import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from addon.wire.errors import ErrorCode

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
# An error reply's code -> the HTTP status of the job's result: the upload's own fault is a 4xx.
RESULT_STATUS = {ErrorCode.NO_FACE: 422, ErrorCode.BAD_IMAGE: 422, ErrorCode.TOO_LARGE: 413,
                 ErrorCode.BAD_REQUEST: 400, ErrorCode.CANCELLED: 409, ErrorCode.BUSY: 503,
                 ErrorCode.UNREACHABLE: 503, ErrorCode.NO_MODEL: 503}


class Refused(Exception):
    """A new job cannot be taken now: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Job:
    id: str
    owner: str
    folder: Path
    photos: list
    request: dict
    state: str = QUEUED
    progress: dict = field(default_factory=lambda: {"stage": "queued", "text": "waiting for the server", "fraction": 0.0})
    error: dict | None = None
    result: dict | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def view(self) -> dict:
        """What the page is told about the job (no paths of this machine)."""
        view = {"id": self.id, "state": self.state, "progress": self.progress, "error": self.error}
        if self.result is not None:
            view["result"] = {k: v for k, v in self.result.items() if k != "folder"}
        return view

    def result_status(self) -> int:
        """HTTP status of the job's result: 200 done, 409 not finished, a 4xx for the upload's own fault."""
        if self.state == DONE:
            return 200
        if self.state not in FINISHED:
            return 409
        return RESULT_STATUS.get((self.error or {}).get("code"), 500)

    def file(self, name: str) -> Path | None:
        """A file of the result by its listed name (any other name, a path included, is None)."""
        if self.result is None or name not in self.result.get("files", ()):
            return None
        return Path(self.result["folder"]) / name


class JobStore:
    def __init__(self, root: Path, *, keep_s: float = 3600.0, per_owner: int = 2, queued: int = 16):
        self.root = Path(root)
        self.keep_s, self.per_owner, self.queued = keep_s, per_owner, queued
        self.jobs: dict[str, Job] = {}

    def create(self, owner: str, photos: list, request: dict) -> Job:
        """A new job with its own folder and the uploaded photos (``[(name, bytes)]``) written into it."""
        active = [job for job in self.jobs.values() if job.state not in FINISHED]
        if sum(job.owner == owner for job in active) >= self.per_owner:
            raise Refused(429, f"you already have {self.per_owner} reconstructions running; wait for one to finish")
        if len(active) >= self.queued:
            raise Refused(503, "the server is busy with other people's photos; try again in a minute")
        job_id = secrets.token_urlsafe(12)
        folder = self.root / job_id
        paths = []
        try:
            (folder / "upload").mkdir(parents=True)
            for index, (suffix, data) in enumerate(photos):
                path = folder / "upload" / f"photo{index}{suffix}"
                path.write_bytes(data)
                paths.append(path)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)  # no half-stored upload left behind
            raise
        job = Job(job_id, owner, folder, paths, dict(request))
        self.jobs[job_id] = job
        return job

    def get(self, owner: str, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and secrets.compare_digest(job.owner, owner) else None

    def finish(self, job: Job, state: str, *, result: dict | None = None, error: dict | None = None) -> None:
        job.state, job.result, job.error, job.finished = state, result, error, time.time()
        if state == DONE:
            job.progress = {"stage": "done", "text": "done", "fraction": 1.0}

    def expire(self, now: float | None = None) -> list:
        """Delete finished jobs older than ``keep_s`` and their files; returns their ids."""
        now = time.time() if now is None else now
        gone = [job for job in self.jobs.values() if job.finished is not None and now - job.finished >= self.keep_s]
        for job in gone:
            shutil.rmtree(job.folder, ignore_errors=True)
            del self.jobs[job.id]
        return [job.id for job in gone]
