"""The server's side of remote use: which bind addresses are safe, and the CURVE key check (ZAP).

Loopback needs no keys: only this machine can connect. Any other bind address must either use
CURVE (a server secret key plus a folder of accepted client public keys) or be explicitly
``--insecure``. The ZAP handler is a socket on the server's I/O thread rather than a thread of its
own: it answers ZeroMQ's key checks and logs each refused key once.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
from zmq.utils import z85

from addon.wire import protocol, security

from .log_limits import RateLimitedLog

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
_REMEMBERED_REFUSALS = 10_000            # refused keys logged once each, up to this many

log = logging.getLogger("faceforge.server")


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ bind/peer address only reaches this machine (``ipc://`` and ``inproc://`` do too)."""
    if "://" not in address:  # a bare peer address from a message's Peer-Address property
        address = f"tcp://{address}:0" if ":" not in address else f"tcp://[{address}]:0"
    parts = urlsplit(address)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", interface names, host names: may reach other machines
        return False


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    allowed: frozenset  # Z85 public keys of accepted clients, as read at start
    folder: str = ""    # where they are: re-read while the server runs (``ZapHandler.refresh``)

    @classmethod
    def load(cls, secret_file: str, client_keys_dir: str) -> "ServerKeys":
        """Raises ``security.KeyFileError`` with a one-line reason."""
        public, secret = security.load_pair(secret_file)
        allowed = security.load_public_folder(client_keys_dir)
        if not allowed:
            raise security.KeyFileError(f"{client_keys_dir} holds no client public keys (*.key): no client could connect")
        return cls(public, secret, frozenset(allowed), str(client_keys_dir))

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_server = True
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public


def check_bind(address: str, keys: ServerKeys | None, insecure: bool) -> str | None:
    """Why the server must not start on ``address`` (None when it may), and a warning for ``--insecure``."""
    if keys is not None or is_loopback(address):
        return None
    if insecure:
        log.warning("serving on %s WITHOUT authentication or encryption (--insecure): anyone who can reach this "
                    "address can use the server and read its traffic", address)
        return None
    return (f"{address} is reachable from other machines: give --secret-key and --client-keys (CURVE), "
            "bind to 127.0.0.1, or pass --insecure to serve unauthenticated anyway")


class ZapHandler:
    """Answers ZeroMQ's authentication requests: CURVE clients whose public key is allowed pass.

    The allowed keys are the ``*.key`` files of the folder as it is now: it is re-read whenever its
    listing or a file in it changed, checked at every handshake (a key added is accepted at once) and
    every second by the server (``refresh``), which closes the open connections of a key removed."""

    def __init__(self, context: zmq.Context, keys: ServerKeys):
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self.allowed = set(keys.allowed)
        self._folder = keys.folder
        self._signature = _signature(self._folder) if self._folder else None
        self._refused: set[bytes] = set()
        self._log = RateLimitedLog(log, rate=1.0, burst=10)

    def refresh(self) -> set[bytes]:
        """Re-read the key folder if it changed; the keys that were allowed and no longer are."""
        if not self._folder:
            return set()
        signature = _signature(self._folder)
        if signature == self._signature:
            return set()
        self._signature = signature
        now = set()
        for path in sorted(Path(self._folder).glob("*.key")):
            try:
                now.add(security.load_public(path))
            except security.KeyFileError as exc:
                self._log.warning("client key ignored: %s", protocol.clip(str(exc), 200))
        revoked, added = self.allowed - now, now - self.allowed
        self.allowed = now
        if revoked or added:
            log.info("client keys re-read from %s: %d added, %d removed, %d allowed", self._folder, len(added),
                     len(revoked), len(now))
        self._refused -= added
        return revoked

    def handle(self) -> None:
        """Answer one pending request (the poller said one is there)."""
        frames = self.socket.recv_multipart()
        if len(frames) < 6:  # only libzmq itself talks to this inproc endpoint; answer anyway
            self.socket.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"bad request", b"", b""])
            return
        self.refresh()
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        key = z85.encode(frames[6]) if mechanism == b"CURVE" and len(frames) > 6 and len(frames[6]) == 32 else b""
        if key and key in self.allowed:
            self.socket.send_multipart([version, request_id, b"200", b"OK", key, b""])
            return
        if key not in self._refused and len(self._refused) < _REMEMBERED_REFUSALS:
            self._refused.add(key)
            self._log.warning("refused a client from %s: %s", protocol.clip(address.decode("ascii", "replace")),
                              f"public key {key.decode()} is not in the allowed client keys" if key
                              else f"mechanism {protocol.clip(mechanism)} is not CURVE")
        self.socket.send_multipart([version, request_id, b"400", b"unknown key", b"", b""])


def _signature(folder: str) -> tuple:
    """What changes when a key file is added, removed or rewritten (names, sizes, modification times)."""
    try:
        return tuple(sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                            for entry in os.scandir(folder) if entry.name.endswith(".key")))
    except OSError:
        return ()
