"""CURVE keys for remote use: generate key pairs, load them, and the client's side of the handshake.

ZeroMQ CURVE authenticates both ends and encrypts the traffic. The server holds a secret key and a
folder of the public keys of the clients it accepts; a client needs the server's public key and
its own key pair. Keys are ZeroMQ certificate files: ``NAME.key`` holds the public key (safe to
share), ``NAME.key_secret`` the pair (keep private). bpy-free: the CLI, the batch and the add-on
all build their client's settings here (``add_client_arguments`` / ``client_keys_from_args``).
pyzmq is imported only where keys are made or read, so command lines can build their parsers without it.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to talk to a CURVE server: its public key, and the client's own pair."""

    server_public: bytes   # Z85, 40 characters
    public: bytes
    secret: bytes

    def apply(self, socket) -> None:
        """Make ``socket`` a CURVE client (before it connects)."""
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


def generate(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (owner-only) into ``folder``; never overwrites."""
    folder = Path(folder)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise KeyFileError(f"{public} or {secret} already exists; remove it or choose another name")
    folder.mkdir(parents=True, exist_ok=True)
    import zmq.auth

    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    public.chmod(0o644)
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    """The public key in a ``.key`` (or ``.key_secret``) file."""
    return _load(path)[0]


def load_pair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key: give the NAME.key_secret file, not NAME.key")
    return public, secret


def load_public_folder(folder: str | os.PathLike) -> set[bytes]:
    """Public keys of every ``*.key`` file in ``folder`` (the clients a server accepts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeyFileError(f"{folder} is not a folder of client public keys")
    return {load_public(path) for path in sorted(folder.glob("*.key"))}


def _load(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc}") from None
    for key in (public, secret):
        if key is not None and not _valid(key):
            raise KeyFileError(f"{path} holds a malformed key (expected 40 Z85 characters)")
    return public, secret


def _valid(key: bytes) -> bool:
    from zmq.utils import z85

    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def client_keys(server_key: str | os.PathLike | None, client_key: str | os.PathLike | None) -> ClientKeys | None:
    """Keys from the server's public key file and the client's ``.key_secret`` file; None if neither is given."""
    if not server_key and not client_key:
        return None
    if not server_key or not client_key:
        raise KeyFileError("CURVE needs both the server's public key and this client's key pair")
    return ClientKeys(load_public(server_key), *load_pair(client_key))


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """``--server-key`` and ``--client-key``, for every command line that talks to a remote server."""
    group = parser.add_argument_group("remote server (CURVE authentication and encryption)")
    group.add_argument("--server-key", metavar="FILE", help="the server's public key file (SERVER.key)")
    group.add_argument("--client-key", metavar="FILE",
                       help="this client's key pair (CLIENT.key_secret, made by `python -m inference_server keys "
                            "generate`); its CLIENT.key must be in the server's --client-keys folder")


def client_keys_from_args(args: argparse.Namespace) -> ClientKeys | None:
    """Raises ``KeyFileError`` (a clear one-line message) for missing or malformed files."""
    return client_keys(getattr(args, "server_key", None), getattr(args, "client_key", None))
