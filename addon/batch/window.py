"""The request window of the batch (bpy-free, zmq-free: the client is passed in): N photos in the
pipeline on one client, so the server works while Blender builds and writes files."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..wire import protocol
from ..wire.errors import ErrorCode, ProtocolError
from .inputs import Photo, read_photo
from .report import ERR_SERVER_GONE, unreadable


@dataclass
class InFlight:
    photo: Photo
    request_id: str
    sent: float


class Window:
    """Keeps up to ``jobs`` photos in the pipeline on one client -- requests in flight at the server
    plus the one the caller is building in Blender -- and yields replies in the order they arrive.

    ``jobs=1`` is strictly serial (send, wait, build, send the next). With ``jobs=N`` the next
    requests are already queued at the server while the caller builds and exports a reply, so the
    server is never idle while Blender writes files. The refill happens *before* a reply is handed
    to the caller.

    ``client`` needs ``send(op, params, payloads, on_progress=...) -> id``, ``abandon(id)`` and
    ``receive(timeout) -> message`` with ``message.id`` and ``message.error`` (``addon.wire.client.Client``);
    ``on_progress(photo, report)``, when given, sees the server's progress reports. ``read`` returns a photo's
    bytes or raises OSError. ``timeout`` bounds how long the server may work on the oldest request
    *after* finishing the one before (requests queued behind others are not penalised for waiting).
    A request past its time is abandoned (the server stops it at its next stage). ``alive`` is polled
    while waiting; when it turns false the remaining photos fail at once.

    ``events()`` yields ``(photo, message, error)``: a reply message (possibly an error reply), or
    ``error`` as ``(code, text)`` for photos that never got a reply (unreadable, timeout, no server).
    """

    def __init__(self, client, photos: Sequence[Photo], params: dict, *, jobs: int, timeout: float,
                 read: Callable[[Path], bytes] = read_photo,
                 alive: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 on_progress: Callable[[Photo, dict], None] | None = None,
                 busy_retries: int = 50, busy_delay: float = 0.5):
        self.client = client
        self.pending = list(photos)
        self.params = dict(params)
        self.jobs = max(1, int(jobs))
        self.timeout = float(timeout)
        self.read = read
        self.alive = alive
        self.clock = clock
        self.sleep = sleep
        self.on_progress = on_progress
        self.busy_retries = busy_retries
        self.busy_delay = busy_delay
        self.attempts: dict = {}        # photo key -> sends so far
        self.lost: set = set()          # photo keys whose worker died once (sent again)
        self.in_flight: dict = {}       # request id -> InFlight, in send order
        self.last_progress = clock()
        self.max_in_flight = 0
        self.aborted: tuple | None = None  # (code, text) once the server is unreachable/gone

    def _send(self, photo: Photo) -> None:
        report = (lambda progress: self.on_progress(photo, progress)) if self.on_progress else None
        if photo.members:  # --same-person: one request carrying every photo of the person
            media = protocol.photo_payloads([self.read(path) for path in photo.members])
        else:
            media = {"video" if photo.is_video else "image": self.read(photo.path)}
        request_id = self.client.send("reconstruct", self.params, media, on_progress=report)
        if not self.in_flight:
            self.last_progress = self.clock()
        self.attempts[photo.key] = self.attempts.get(photo.key, 0) + 1
        self.in_flight[request_id] = InFlight(photo, request_id, self.clock())
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))

    def _send_again(self, photo: Photo, code: str) -> bool:
        """Whether an error reply puts the photo back at the front of the queue: the server's queue
        was full (a shared server; up to ``busy_retries`` sends, pausing when nothing else is in
        flight), or the server's worker died running it and was restarted (once: a photo that takes
        a worker down twice fails with the server's message)."""
        if code == ErrorCode.BUSY and self.attempts.get(photo.key, 0) < self.busy_retries:
            if not self.in_flight:
                self.sleep(self.busy_delay)
        elif code == ErrorCode.WORKER_LOST and photo.key not in self.lost:
            self.lost.add(photo.key)
        else:
            return False
        self.pending.insert(0, photo)
        return True

    def fill(self, capacity: int) -> list:
        """Send until ``capacity`` requests are in flight. Returns immediate failures as events."""
        failures = []
        while self.pending and len(self.in_flight) < capacity and self.aborted is None:
            photo = self.pending.pop(0)
            try:
                self._send(photo)
            except OSError as exc:
                failures.append((photo, None, unreadable(photo.name, exc)))
            except ProtocolError as exc:  # unreachable, or a request the client refuses to encode
                failures.append((photo, None, (exc.code, exc.message)))
                if exc.code == ErrorCode.UNREACHABLE:
                    self.aborted = (exc.code, exc.message)
        return failures

    def _abort_all(self, code: str, text: str) -> list:
        self.aborted = (code, text)
        lost = [(f.photo, None, (code, text)) for f in self.in_flight.values()]
        lost += [(p, None, (code, text)) for p in self.pending]
        self.in_flight.clear()
        self.pending.clear()
        return lost

    def events(self):
        while True:
            yield from self.fill(self.jobs)
            if self.aborted is not None:
                yield from self._abort_all(*self.aborted)
                return
            if not self.in_flight:
                return
            oldest = next(iter(self.in_flight.values()))
            start = max(self.last_progress, oldest.sent)
            remaining = start + self.timeout - self.clock()
            if remaining <= 0:
                del self.in_flight[oldest.request_id]
                self.client.abandon(oldest.request_id)
                self.last_progress = self.clock()
                yield oldest.photo, None, (ErrorCode.TIMEOUT, f"no reply within {self.timeout:g} s")
                continue
            try:
                message = self.client.receive(min(remaining, 1.0))
            except ProtocolError as exc:
                if exc.code == ErrorCode.TIMEOUT:  # a 1-second slice passed: check the server, loop
                    if not self.alive():
                        yield from self._abort_all(ERR_SERVER_GONE, "the server process exited")
                        return
                    continue
                # A reply that does not decode: we cannot tell whose it was; fail the oldest.
                del self.in_flight[oldest.request_id]
                self.client.abandon(oldest.request_id)
                yield oldest.photo, None, (exc.code, exc.message)
                continue
            entry = self.in_flight.pop(message.id, None)
            if entry is None:
                if message.id == "" and self.in_flight:   # id-less error: the server could not parse ours
                    entry = self.in_flight.pop(oldest.request_id)
                else:
                    continue                               # a reply to no request of ours
            self.last_progress = self.clock()
            if message.error is not None and self._send_again(entry.photo, message.error.code):
                continue
            # Refill first (the caller's photo takes one slot): the server starts the next photo
            # while the caller builds and exports this one.
            yield from self.fill(self.jobs - 1)
            yield entry.photo, message, None
