"""The server's client connections: how many may be open, and dropping the ones that must go.

Every TCP connection costs a file descriptor; idle ones up to the descriptor limit locked new
clients out, and at that limit libzmq's listener fails to accept and retries at once (a spinning
I/O thread). So the server raises its soft descriptor limit to the hard one at start, keeps its
connection cap well below it (``descriptor_budget``), and watches connections through a ZeroMQ
socket monitor: a connection beyond the cap per peer address (``--max-connections-per-peer``) is
dropped as soon as it is accepted; at the server's cap (``--max-connections``) a peer holding at
least two more connections than the newcomer's gives up its connection idle longest (its last
message longest ago), else the newcomer is dropped: peers end with fair shares, and a flood from
some addresses never locks out a client from another. A client refused this way sees its connection closed (its requests time out:
``unreachable``); a client evicted while idle reconnects by itself on its next request.

Dropping a connection shuts its socket down (borrowing libzmq's descriptor, never closing it): libzmq
reads the end of the stream and closes its own descriptor, so no descriptor is ever closed under it.
The same serves CURVE key revocation (``security.ZapHandler.refresh``): each message's descriptor
and key (``ZMQ_SRCFD``, the ``User-Id`` property) tie open connections to the keys they came with.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import socket
import time
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from .log_limits import RateLimitedLog

log = logging.getLogger("faceforge.server")

RESERVED_DESCRIPTORS = 128  # for libzmq's own (signalers, worker sockets), logs, model files


def descriptor_budget(wanted: int) -> int:
    """Raise the soft descriptor limit toward the hard one; the connections the server can then allow
    (``wanted``, or fewer with a warning when the hard limit is too low)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_DESCRIPTORS
    target = needed if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    allowed = max(1, min(wanted, soft - RESERVED_DESCRIPTORS))
    if allowed < wanted:
        log.warning("only %d connections can be allowed (file descriptor limit %d), not %d", allowed, soft, wanted)
    return allowed


@dataclass
class Connection:
    peer: str                  # the peer's IP address ("local" for ipc/inproc peers)
    opened: float
    last_seen: float
    key: bytes = b""           # the CURVE public key it authenticated with (Z85), once it sent a message


class ConnectionGuard:
    """Counts the ROUTER's connections from its monitor events and enforces the caps."""

    def __init__(self, router: zmq.Socket, max_total: int, max_per_peer: int):
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.monitor = router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._open: dict[int, Connection] = {}  # by libzmq's descriptor
        self._per_peer: collections.Counter = collections.Counter()  # open connections by peer address
        self.refused = 0
        self.evicted = 0
        self._log = RateLimitedLog(log, rate=1.0, burst=5)

    def handle(self) -> None:
        """Process the monitor's pending events (the poller said some are there)."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            descriptor = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._accepted(descriptor)
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._forget(descriptor)

    def seen(self, frame: zmq.Frame) -> bytes:
        """A message arrived on a connection: it is not idle. Returns the key it authenticated with."""
        try:
            descriptor = frame.get(zmq.SRCFD)
            key = frame.get("User-Id").encode()
        except (zmq.ZMQError, AttributeError, UnicodeError):
            key, descriptor = b"", None
        connection = self._open.get(descriptor)
        if connection is not None:
            connection.last_seen = time.monotonic()
            connection.key = key
        return key

    def drop(self, frame: zmq.Frame) -> None:
        """Close the connection a message came on."""
        try:
            descriptor = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return
        if self._forget(descriptor):
            _shut(descriptor)

    def drop_keys(self, keys: set) -> int:
        """Close every open connection that authenticated with one of ``keys``; how many."""
        doomed = [descriptor for descriptor, connection in self._open.items() if connection.key in keys]
        for descriptor in doomed:
            self._forget(descriptor)
            _shut(descriptor)
        return len(doomed)

    def describe(self) -> dict:
        return {"open": len(self._open), "max": self.max_total, "max_per_peer": self.max_per_peer,
                "refused": self.refused, "evicted": self.evicted}

    def close(self) -> None:
        self.monitor.close(linger=0)

    def _accepted(self, descriptor: int) -> None:
        peer = _peer_address(descriptor)
        if peer is None:  # gone already (or the number was reused): nothing to count
            return
        now = time.monotonic()
        same_peer = self._per_peer[peer]
        if same_peer >= self.max_per_peer:
            self._refuse(descriptor, peer, f"{same_peer} connections from it are open (limit {self.max_per_peer} "
                                           "per peer address, --max-connections-per-peer)")
            return
        if len(self._open) >= self.max_total:
            victim = self._room_for(peer, same_peer)
            if victim is None:
                self._refuse(descriptor, peer, f"{len(self._open)} connections are open (limit {self.max_total}, "
                                               "--max-connections), none from a peer holding more")
                return
            idle = self._open[victim]
            self._forget(victim)
            _shut(victim)
            self.evicted += 1
            self._log.info("closed a connection from %s, idle for %.0f s, to make room for %s (limit %d connections)",
                           idle.peer, now - idle.last_seen, peer, self.max_total)
        self._open[descriptor] = Connection(peer, now, now)
        self._per_peer[peer] += 1

    def _forget(self, descriptor: int) -> bool:
        connection = self._open.pop(descriptor, None)
        if connection is None:
            return False
        self._per_peer[connection.peer] -= 1
        if not self._per_peer[connection.peer]:
            del self._per_peer[connection.peer]
        return True

    def _room_for(self, peer: str, held: int) -> int | None:
        """At the cap: the connection to close for a newcomer from ``peer`` (which holds ``held``): the one
        idle longest among those of peers holding at least two more; None when no peer does (the newcomer is
        refused). So a peer never gains by reconnecting, and one holding fewer is never locked out."""
        if max(self._per_peer.values(), default=0) < held + 2:  # the common case under a flood: at once
            return None
        candidates = [(connection.last_seen, descriptor) for descriptor, connection in self._open.items()
                      if self._per_peer[connection.peer] >= held + 2]
        return min(candidates)[1] if candidates else None

    def _refuse(self, descriptor: int, peer: str, why: str) -> None:
        _shut(descriptor)
        self.refused += 1
        self._log.warning("refused a connection from %s: %s", peer, why)


def _peer_address(descriptor: int) -> str | None:
    """The IP address of the peer of libzmq's socket ``descriptor``."""
    try:
        with _borrowed(descriptor) as borrowed:
            if borrowed.family not in (socket.AF_INET, socket.AF_INET6):
                return "local"
            return borrowed.getpeername()[0]
    except OSError:
        return None


def _shut(descriptor: int) -> None:
    """End a connection libzmq owns: shut its socket down (libzmq reads the end and closes its descriptor)."""
    try:
        with _borrowed(descriptor) as borrowed:
            borrowed.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


@contextlib.contextmanager
def _borrowed(descriptor: int):
    """libzmq's socket as a Python socket that never closes it, and needs no descriptor of its own (a
    duplicate would fail exactly when the descriptors run out, which is when connections must be shut)."""
    borrowed = socket.socket(fileno=descriptor)
    try:
        yield borrowed
    finally:
        borrowed.detach()
