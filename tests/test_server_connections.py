"""Connections a server must not keep: idle floods up to the descriptor limit, and keys revoked while it runs.

Real servers (a stand-in pipeline, tests/server_doubles.py) on real TCP sockets; other peers are
other loopback addresses (127.0.0.2, ...) as source addresses, so one machine plays several.
"""
from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth

from addon.server.process import free_address
from addon.wire import protocol, security
from addon.wire.client import Client
from addon.wire.protocol import ErrorCode, ProtocolError
from inference_server.config import ServerConfig
from inference_server.security import ServerKeys

from .conftest import REPO
from .server_doubles import StagedPipeline, running
from .test_server_workers import wait_for

LOCAL = "tcp://127.0.0.1:*"


def from_peer(context: zmq.Context, address: str, peer: str) -> zmq.Socket:
    """A DEALER connected to ``address`` from source address ``peer`` (another loopback address)."""
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address.replace("tcp://", f"tcp://{peer}:0;"))
    return dealer


def connections(address: str) -> dict:
    with Client(address, timeout=5) as client:
        return client.info()["connections"]


def test_one_peer_cannot_take_every_connection_and_heavy_peers_make_room():
    config = ServerConfig(bind=LOCAL, max_connections=12, max_connections_per_peer=5)
    context = zmq.Context()
    try:
        with running(StagedPipeline(0.0), config) as server:
            flood = [from_peer(context, server.address, "127.0.0.2") for _ in range(20)]
            assert wait_for(lambda: connections(server.address)["refused"] >= 15, 10)
            # The flood's five, and this query's. The previous queries' connections close on their own
            # time: on a loaded machine one was still counted (7 open, seen once in a full run).
            assert wait_for(lambda: connections(server.address)["open"] <= 5 + 1, 5)
            assert connections(server.address)["max"] == 12
            for peer in ("127.0.0.3", "127.0.0.4"):  # two more peers fill the server (5 + 5 + 5 > 12)
                flood += [from_peer(context, server.address, peer) for _ in range(5)]
            time.sleep(0.5)
            started = time.monotonic()
            with Client(server.address, timeout=10) as client:  # a new client gets in: a heavy peer makes room
                assert client.info()["protocol"] == protocol.PROTOCOL
            assert time.monotonic() - started < 3
            state = connections(server.address)
            assert state["evicted"] >= 1 and state["open"] <= 12
    finally:
        context.destroy(linger=0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


def test_idle_connections_up_to_the_descriptor_limit_neither_spin_the_server_nor_lock_clients_out(tmp_path):
    """At a descriptor limit of 256, 300 idle TCP connections (no ZeroMQ greeting) made the former
    server's I/O thread spin on failing accepts, and new clients waited until libzmq's 30 s handshake
    timeout closed the idle ones. The cap stays below the limit, and peers holding more make room."""
    address = free_address()

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    server = subprocess.Popen([sys.executable, "-m", "tests.server_doubles", address, "0",
                               "max_connections_per_peer=1000"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=(tmp_path / "server.log").open("w"), text=True, preexec_fn=low_limit)
    host, port = address.removeprefix("tcp://").split(":")
    idle = []
    try:
        assert server.stdout.readline().strip() == "serving" and server.stdout.readline().strip() == "ready"
        for number in range(300):
            connection = socket.socket()
            connection.bind((f"127.0.0.{2 + number % 50}", 0))
            connection.connect((host, int(port)))
            idle.append(connection)
        time.sleep(1.0)
        before = cpu_seconds(server.pid)
        time.sleep(2.0)
        assert cpu_seconds(server.pid) - before < 0.5  # not spinning
        started = time.monotonic()
        with Client(address, timeout=10) as client:
            assert client.info()["connections"]["max"] == 256 - 128
        assert time.monotonic() - started < 4
        log = (tmp_path / "server.log").read_text()
        assert "only 128 connections can be allowed (file descriptor limit 256), not 256" in log
        assert "refused a connection from 127.0.0." in log and "Too many open files" not in log
    finally:
        for connection in idle:
            connection.close()
        server.kill()
        server.wait()


@pytest.fixture
def key_folder(tmp_path) -> Path:
    """server.key(_secret); clients/alice.key allowed at start; bob's pair made but not allowed yet."""
    for name in ("server", "alice", "bob"):
        zmq.auth.create_certificates(str(tmp_path), name)
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
    return tmp_path


def as_client(folder: Path, name: str) -> security.ClientKeys:
    return security.client_keys(folder / "server.key", folder / f"{name}.key_secret")


def test_client_keys_added_or_removed_while_the_server_runs_take_effect(key_folder):
    """The former server read --client-keys once: a removed key kept working, on open and new connections,
    and an added one was refused until a restart."""
    keys = ServerKeys.load(str(key_folder / "server.key_secret"), str(key_folder / "clients"))
    with running(StagedPipeline(0.0), ServerConfig(bind=LOCAL, keys=keys)) as server:
        alice = Client(server.address, timeout=3, keys=as_client(key_folder, "alice"))
        assert alice.call("reconstruct", {}, {"image": b"alice"}).result["image"] == "alice"
        with Client(server.address, timeout=2, keys=as_client(key_folder, "bob")) as bob:
            with pytest.raises(ProtocolError) as refused:
                bob.info()
            assert refused.value.code in (ErrorCode.TIMEOUT, ErrorCode.UNREACHABLE)
        (key_folder / "clients" / "bob.key").write_bytes((key_folder / "bob.key").read_bytes())
        with Client(server.address, timeout=3, keys=as_client(key_folder, "bob")) as bob:  # at once, no restart
            assert bob.call("reconstruct", {}, {"image": b"bob"}).result["image"] == "bob"
        (key_folder / "clients" / "alice.key").unlink()
        time.sleep(1.5)  # the server re-reads the folder every second
        with pytest.raises(ProtocolError):  # her open connection was closed, and reconnecting is refused
            alice.call("reconstruct", {}, {"image": b"alice again"})
        alice.close()
        with Client(server.address, timeout=2, keys=as_client(key_folder, "alice")) as again:
            with pytest.raises(ProtocolError):
                again.info()
        with Client(server.address, timeout=3, keys=as_client(key_folder, "bob")) as bob:  # others are unaffected
            assert bob.info()["protocol"] == protocol.PROTOCOL
