"""The reply bytes the server still holds for each client connection, and the bound on them.

ZeroMQ's high-water mark counts messages, not bytes, and a client that does not read (its TCP
window closed) leaves every reply sent to it in the server's memory until it disconnects: 60
replies of 34 MB were 2 GB, per connection. So each large frame sent to a client is tracked
(pyzmq's ``MessageTracker``: done once libzmq has written it to the socket and released it), and
the bytes not yet released are that connection's unread bytes. The server refuses work whose reply
would take a connection over its bound (``busy``), and drops, rather than queues, a reply that
would (``Server._send``): memory held for one connection never exceeds ``limit``.
"""
from __future__ import annotations

import zmq

TRACKED_BYTES = zmq.COPY_THRESHOLD  # smaller frames are copied into libzmq at once: nothing of ours is held


def _size(frame) -> int:
    if isinstance(frame, zmq.Frame):
        return len(frame)
    return memoryview(frame).nbytes


class UnreadReplies:
    """Per client identity: the trackers and sizes of its large frames that libzmq still holds."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held: dict[bytes, list[tuple[zmq.MessageTracker, int]]] = {}

    def of(self, identity: bytes) -> int:
        """Bytes sent to ``identity`` that libzmq has not yet written out."""
        entries = self._held.get(identity)
        if not entries:
            return 0
        entries[:] = [(tracker, size) for tracker, size in entries if not tracker.done]
        if not entries:
            del self._held[identity]
        return sum(size for _, size in entries)

    def prune(self) -> None:
        """Forget what every connection has been sent and libzmq has released (a closed connection's too)."""
        for identity in list(self._held):
            self.of(identity)

    @staticmethod
    def size(frames: list) -> int:
        """The bytes of a message's frames that would be held until written."""
        return sum(size for size in map(_size, frames) if size >= TRACKED_BYTES)

    @staticmethod
    def tracked(frames: list) -> list:
        """The frames to send, the large ones wrapped so that libzmq's release of them can be seen."""
        return [zmq.Frame(frame.buffer if isinstance(frame, zmq.Frame) else frame, track=True)
                if _size(frame) >= TRACKED_BYTES else frame for frame in frames]

    def sent(self, identity: bytes, frames: list) -> None:
        """Record the large frames of a message that was handed to libzmq for ``identity``."""
        held = [(frame.tracker, len(frame)) for frame in frames
                if isinstance(frame, zmq.Frame) and frame.tracker is not None and len(frame) >= TRACKED_BYTES]
        if held:
            self._held.setdefault(identity, []).extend(held)
