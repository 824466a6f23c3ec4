"""Remote use over real sockets: CURVE keys from the CLI, allowed / unknown / plaintext clients, traffic
captured on the wire, what ``info`` tells remote peers, and which bind addresses may start at all."""
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from addon.server.process import free_port
from addon.wire import security
from addon.wire.client import Client
from addon.wire.protocol import ErrorCode, ProtocolError

from .conftest import REPO
from .fuzz_messages import small_photos
from .photo_fixtures import one_photo_folder  # noqa: F401 (fixture)


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference_server", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """server.key(_secret), clients/alice.key (allowed), alice.key_secret, mallory.key(_secret): made by the CLI."""
    root = tmp_path_factory.mktemp("keys")
    for folder, name in ((root, "server"), (root / "clients", "alice"), (root, "mallory")):
        assert _cli("keys", "generate", str(folder), "--name", name).returncode == 0
    (root / "alice.key_secret").write_bytes((root / "clients" / "alice.key_secret").read_bytes())
    (root / "clients" / "alice.key_secret").unlink()
    return root


def _client_keys(root: Path, name: str) -> security.ClientKeys:
    return security.client_keys(root / "server.key", root / f"{name}.key_secret")


@pytest.fixture(scope="module")
def curve_server(keys, tmp_path_factory):
    """A real server on every interface (tcp://*), CURVE only; yields (port, log path)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("curve") / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "inference_server", "serve", "--bind", f"tcp://*:{port}",
                                    "--device", "cpu", "--secret-key", str(keys / "server.key_secret"),
                                    "--client-keys", str(keys / "clients")], cwd=REPO, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while b" ready on " not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield port, log_path
    finally:
        process.terminate()
        process.wait(10)


def test_key_generation_keeps_the_secret_private_and_never_overwrites(keys):
    assert (keys / "server.key").stat().st_mode & 0o777 == 0o644
    assert (keys / "server.key_secret").stat().st_mode & 0o777 == 0o600
    again = _cli("keys", "generate", str(keys), "--name", "server")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_an_allowed_client_reconstructs(curve_server, keys, astronaut_png):
    port, _ = curve_server
    with Client(f"tcp://127.0.0.1:{port}", timeout=120, keys=_client_keys(keys, "alice")) as client:
        info = client.info()
        (face,) = client.reconstruct(small_photos([astronaut_png], 256)[0], {"resolution": 20}).faces
    assert "torch" in info  # a local peer is told everything
    assert face.meta["vertex_count"] > 100


def test_an_unknown_client_gets_nothing_and_one_log_line(curve_server, keys):
    port, log_path = curve_server
    for _ in range(2):  # ZeroMQ retries the handshake many times: still one line
        with Client(f"tcp://127.0.0.1:{port}", timeout=5, keys=_client_keys(keys, "mallory")) as client:
            with pytest.raises(ProtocolError) as info:
                client.info()
        assert info.value.code == ErrorCode.UNREACHABLE and "key" in info.value.message
    mallory = security.load_public(keys / "mallory.key").decode()
    lines = [line for line in log_path.read_text().splitlines() if "refused a client" in line]
    assert len(lines) == 1 and mallory in lines[0]


def test_a_plaintext_client_is_refused(curve_server):
    port, _ = curve_server
    with Client(f"tcp://127.0.0.1:{port}", timeout=5) as client:
        with pytest.raises(ProtocolError) as info:
            client.info()
    assert info.value.code == ErrorCode.UNREACHABLE


class TcpRecorder:
    """A raw TCP proxy on 127.0.0.1 that keeps a copy of every byte in both directions."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    self.captured += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        self._listener.close()


def _capture(target_port: int, photo: bytes, keys=None) -> bytes:
    recorder = TcpRecorder(target_port)
    try:
        with Client(f"tcp://127.0.0.1:{recorder.port}", timeout=120, keys=keys) as client:
            client.reconstruct(photo, {"resolution": 20})
    finally:
        recorder.close()
    return bytes(recorder.captured)


def test_traffic_on_the_wire_is_not_plaintext(curve_server, keys, server_address, astronaut_png):
    photo = small_photos([astronaut_png], 256)[0]
    probes = [photo[i:i + 32] for i in range(200, len(photo) - 32, len(photo) // 8)]
    plain = _capture(int(server_address.rsplit(":", 1)[1]), photo)
    assert b'"faceforge"' in plain and all(p in plain for p in probes)  # the capture does see plaintext
    encrypted = _capture(curve_server[0], photo, _client_keys(keys, "alice"))
    assert len(encrypted) > len(photo)
    assert b"faceforge" not in encrypted and b'"op"' not in encrypted and b"vertices" not in encrypted
    assert not any(p in encrypted for p in probes)


def _own_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 9))  # UDP: picks the outgoing interface, sends nothing
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_remote_peers_are_not_told_library_versions(curve_server, keys):
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback interface")
    with Client(f"tcp://{own}:{curve_server[0]}", timeout=10, keys=_client_keys(keys, "alice")) as client:
        info = client.info()
    assert "torch" not in info and info["protocol_version"] and info["limits"]["reply_bytes"] > 0


def test_the_cli_reaches_a_curve_server_with_its_key_flags(curve_server, keys, tmp_path, grace_hopper_jpg):
    photo = tmp_path / "hopper.jpg"
    photo.write_bytes(small_photos([grace_hopper_jpg], 256)[0])
    address = f"tcp://127.0.0.1:{curve_server[0]}"
    result = _cli("reconstruct", str(photo), "--server", address, "--resolution", "20", "--server-key",
                  str(keys / "server.key"), "--client-key", str(keys / "alice.key_secret"))
    assert result.returncode == 0 and "face 0:" in result.stdout
    half = _cli("reconstruct", str(photo), "--server", address, "--server-key", str(keys / "server.key"))
    assert half.returncode == 2 and half.stderr.startswith("error:") and "key pair" in half.stderr


def test_a_reachable_address_needs_keys_or_an_explicit_insecure(tmp_path):
    refused = _cli("serve", "--bind", f"tcp://0.0.0.0:{free_port()}")
    assert refused.returncode == 2 and "--insecure" in refused.stderr and "Traceback" not in refused.stderr
    log_path = tmp_path / "insecure.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "inference_server", "serve", "--insecure",
                                    "--bind", f"tcp://0.0.0.0:{free_port()}", "--device", "cpu"],
                                   cwd=REPO, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 60
        while b"WITHOUT authentication" not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()


def test_the_panel_session_and_the_batch_use_the_key_files(curve_server, keys, tmp_path, one_photo_folder):
    """The add-on's preferences (key file paths) and the batch's --server-key/--client-key reach the server."""
    from addon.server import session as session_module
    from tests.batch_fixtures import _has_bpy, load_summary, python_command, run_batch

    address = f"tcp://127.0.0.1:{curve_server[0]}"
    state = session_module.Session()
    try:
        state.use_keys(str(keys / "server.key"), str(keys / "alice.key_secret"))
        probe = state.probes.submit(lambda job: job.client.info(timeout=30), address=address)
        assert probe.future.result(timeout=60)["protocol"] == "faceforge"
        with pytest.raises(ValueError):
            state.use_keys(str(keys / "server.key"), "")  # half a key set is refused, with a message
    finally:
        state.close()
    if not _has_bpy():
        pytest.skip("bpy is not importable here")
    output = tmp_path / "out"
    result = run_batch(python_command("--input", str(one_photo_folder), "--output", str(output), "--formats", "blend",
                                      "--server", address, "--server-key", str(keys / "server.key"),
                                      "--client-key", str(keys / "alice.key_secret")))
    assert result.returncode == 0 and load_summary(output)["counts"]["ok"] == 1
    refused = run_batch(python_command("--input", str(one_photo_folder), "--output", str(tmp_path / "plain"),
                                       "--server", address, "--timeout", "5"))
    assert refused.returncode != 0
