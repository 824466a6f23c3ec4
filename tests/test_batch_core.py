"""Unit tests of the bpy-free modules of the batch (``addon.batch``): arguments, discovery, resume
bookkeeping, the request window, progress and the file helpers. No Blender and no server needed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from addon.batch.cli import DEFAULT_FORMATS, missing_modules, parse_args, script_argv, setup_hint
from addon.batch.inputs import Photo, assign_keys, discover
from addon.batch.outputs import STAGING_PREFIX, clean_stale_staging, commit, decide, make_staging, output_names, read_manifest
from addon.batch.report import ERR_SERVER_GONE, ERR_UNREADABLE, PhotoReport, Progress, Summary, format_duration
from addon.batch.run import main as run_batch_main
from addon.batch.window import Window
from addon.server.process import can_import_torch
from addon.wire.errors import ErrorCode, Exit, ProtocolError
from tests.batch_fixtures import BATCH


# ------------------------------------------------------------------------------------------ argv

def test_script_argv_takes_everything_after_double_dash():
    argv = ["/usr/bin/blender", "-b", "--python-exit-code", "1", "-P", "scripts/batch.py", "--", "--input", "a", "-o", "b"]
    assert script_argv(argv) == ["--input", "a", "-o", "b"]
    assert script_argv(["scripts/batch.py", "--input", "a"]) == ["--input", "a"]
    assert script_argv(["scripts/batch.py", "--", "--input", "a"]) == ["--input", "a"]


def test_parse_args_defaults_and_values(tmp_path):
    opts = parse_args(["--input", "x.jpg", "y", "--input", "z", "--output", "out"])
    assert [str(p) for p in opts.inputs] == ["x.jpg", "y", "z"]
    assert opts.output.is_absolute() and opts.output.name == "out"
    assert opts.formats == DEFAULT_FORMATS and "face" not in opts.request and opts.jobs == 2
    assert opts.server is None and not opts.overwrite
    assert opts.request == {}  # options not given are not sent: the server's own defaults apply
    assert opts.build == {}
    assert opts.summary_path == opts.output / "summary.json"

    opts = parse_args(["-i", "a", "-o", "o", "--server", "tcp://h:1", "--face", "ALL", "--formats", "stl, gltf,obj,stl",
                       "--resolution", "60", "--smooth", "0", "--detail", "0.001", "--subdivision", "2",
                       "--overwrite", "--jobs", "3"])
    assert opts.server == "tcp://h:1" and opts.request["face"] == "all"
    assert opts.formats == ("stl", "glb", "obj")
    assert opts.request == {"face": "all", "resolution": 60}
    assert opts.build == {"smooth_iterations": 0, "subdivision_levels": 2, "detail_strength": 0.001}
    assert opts.overwrite and opts.jobs == 3
    assert parse_args(["-i", "a", "-o", "o", "--face", "1"]).request["face"] == "1"
    # The schema's own flags work beside the old aliases.
    assert parse_args(["-i", "a", "-o", "o", "--smooth-iterations", "3", "--subdivision-levels", "0",
                       "--detail-strength", "-0.01"]).build == {"smooth_iterations": 3, "subdivision_levels": 0,
                                                                "detail_strength": -0.01}


@pytest.mark.parametrize("argv", [
    [],                                                        # no input/output
    ["-i", "a"],                                               # no output
    ["-i", "a", "-o", "o", "--formats", "usdz"],
    ["-i", "a", "-o", "o", "--formats", ""],
    ["-i", "a", "-o", "o", "--face", "biggest"],
    ["-i", "a", "-o", "o", "--jobs", "0"],
    ["-i", "a", "-o", "o", "--smooth", "-1"],
    ["-i", "a", "-o", "o", "--resolution", "4"],                # outside the schema's range
    ["-i", "a", "-o", "o", "--detail", "nan"],
    ["-i", "a", "-o", "o", "--server", "tcp://x:1", "--start-server"],  # mutually exclusive
    ["-i", "a", "-o", "o", "--ray", "auto", "--server", "tcp://x:1"],    # Ray's actors are the server
    ["-i", "a", "-o", "o", "--ray", "local", "--workers", "2"],
    ["-i", "a", "-o", "o", "--ray", "local", "--cpu-actors", "0"],
])
def test_parse_args_rejects_bad_command_lines(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == Exit.USAGE
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ")  # one line, no usage block


# ------------------------------------------------------------------------------------- discovery

def test_discover_files_and_folders(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.jpg", "sub/d.jpeg"):
        (photos / name).write_bytes(b"x")
    (photos / "dir.jpg").mkdir()  # a folder with an image suffix is not a photo
    output = photos / "out"
    (output / "a").mkdir(parents=True)
    (output / "a" / "a_face0.png").write_bytes(b"x")  # our own outputs inside the input folder
    explicit = tmp_path / "explicit.dat"
    explicit.write_bytes(b"x")

    found, missing = discover([photos, explicit, photos / "a.png", tmp_path / "nope.jpg"], output=output)
    assert [p.name for p in found] == ["a.png", "b.JPG", "c.webp", "explicit.dat"]  # explicit files whatever suffix; deduped
    assert [(p.name, why) for p, why in missing] == [("nope.jpg", "does not exist")]
    assert all(p.path.is_absolute() for p in found)

    found, _ = discover([photos], output=output, recursive=True)
    assert [p.name for p in found] == ["a.png", "b.JPG", "c.webp", "d.jpeg"]


def test_keys_are_unique_and_safe():
    paths = [Path("/x/face.jpg"), Path("/x/face.png"), Path("/y/face.jpg"), Path("/z/other one.jpg"), Path("/z/a:b*c.png")]
    keys = assign_keys(paths)
    assert keys[0] == "face_jpg" and keys[1] == "face_png"
    assert keys[2] == "y_face_jpg"
    assert keys[3] == "other one"
    assert keys[4] == "a_b_c"
    assert len({k.lower() for k in keys}) == len(keys)
    # Same name three times in folders with the same name: numbered.
    keys = assign_keys([Path("/a/p/x.jpg"), Path("/b/p/x.jpg"), Path("/c/p/x.jpg")])
    assert len(set(keys)) == 3


# ------------------------------------------------------------------------------ resume / commit

def _photo(tmp_path, key="a") -> Photo:
    return Photo(path=tmp_path / f"{key}.jpg", key=key)


def _stage(output, photo, formats, content=b"new"):
    staging = make_staging(output, photo)
    files = output_names(photo.key, formats)
    for name in files:
        (staging / name).write_bytes(content)
    return staging, {"status": "ok", "formats": list(formats), "files": files}


def test_new_photo_runs_then_is_skipped(tmp_path):
    output, photo = tmp_path / "out", _photo(tmp_path)
    decision = decide(output, photo, ("blend", "glb"), overwrite=False)
    assert decision.action == "run" and decision.missing_formats == ("blend", "glb")
    staging, manifest = _stage(output, photo, ("blend", "glb"))
    assert staging.name.startswith(STAGING_PREFIX)
    paths = commit(staging, output / "a", overwrite=False, manifest=manifest)
    assert sorted(p.name for p in paths) == ["a.blend", "a.glb"]
    assert not staging.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert (output / "a").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert read_manifest(output / "a")["status"] == "ok"
    assert decide(output, photo, ("blend", "glb"), overwrite=False).action == "skip"
    assert decide(output, photo, ("glb",), overwrite=False).action == "skip"


def test_missing_formats_are_added_without_touching_existing_files(tmp_path):
    output, photo = tmp_path / "out", _photo(tmp_path)
    staging, manifest = _stage(output, photo, ("blend",), b"old")
    commit(staging, output / "a", overwrite=False, manifest=manifest)
    decision = decide(output, photo, ("blend", "obj"), overwrite=False)
    assert decision.action == "run" and decision.missing_formats == ("obj",)
    staging, manifest = _stage(output, photo, ("blend", "obj"), b"new")  # even if a build re-made the .blend
    commit(staging, output / "a", overwrite=False, manifest=manifest)
    assert (output / "a" / "a.blend").read_bytes() == b"old"
    assert (output / "a" / "a.obj").read_bytes() == b"new" and (output / "a" / "a.mtl").exists()
    merged = read_manifest(output / "a")
    assert merged["formats"] == ["blend", "obj"] and "a.mtl" in merged["files"]
    assert decide(output, photo, ("obj", "blend"), overwrite=False).action == "skip"


def test_deleted_output_file_is_redone(tmp_path):
    output, photo = tmp_path / "out", _photo(tmp_path)
    staging, manifest = _stage(output, photo, ("blend", "glb"))
    commit(staging, output / "a", overwrite=False, manifest=manifest)
    (output / "a" / "a.glb").unlink()
    decision = decide(output, photo, ("blend", "glb"), overwrite=False)
    assert decision.action == "run" and decision.missing_formats == ("glb",)


def test_foreign_or_unfinished_folder_is_a_conflict_unless_overwrite(tmp_path):
    output, photo = tmp_path / "out", _photo(tmp_path)
    (output / "a").mkdir(parents=True)
    (output / "a" / "mine.txt").write_text("user data")
    decision = decide(output, photo, ("blend",), overwrite=False)
    assert decision.action == "conflict" and "--overwrite" in decision.reason
    assert decide(output, photo, ("blend",), overwrite=True).action == "run"


def test_overwrite_replaces_the_folder(tmp_path):
    output, photo = tmp_path / "out", _photo(tmp_path)
    staging, manifest = _stage(output, photo, ("blend", "glb"), b"old")
    commit(staging, output / "a", overwrite=False, manifest=manifest)
    decision = decide(output, photo, ("blend",), overwrite=True)
    assert decision.action == "run" and decision.reason == "overwrite"
    staging, manifest = _stage(output, photo, ("blend",), b"new")
    commit(staging, output / "a", overwrite=True, manifest=manifest)
    assert (output / "a" / "a.blend").read_bytes() == b"new"
    assert not (output / "a" / "a.glb").exists()
    assert [p.name for p in output.iterdir()] == ["a"]  # no staging or trash left behind


def test_stale_staging_is_cleaned(tmp_path):
    output = tmp_path / "out"
    stale = make_staging(output, _photo(tmp_path))
    (stale / "half.blend").write_bytes(b"x")
    keep = output / "user_folder"
    keep.mkdir()
    assert clean_stale_staging(output) == [stale]
    assert not stale.exists() and keep.exists()


# ----------------------------------------------------------------------------- summary/progress

def test_summary_written_atomically(tmp_path):
    opts = parse_args(["-i", "a", "-o", str(tmp_path / "o")])
    summary = Summary(opts.summary_path, opts.recorded())
    summary.add(PhotoReport(photo="a.jpg", key="a", status="ok", faces=1, vertices=10))
    summary.add(PhotoReport(photo="b.jpg", key="b").fail("no_face", "no face\nfound "))
    summary.write()
    data = json.loads(opts.summary_path.read_text())
    assert data["counts"] == {"ok": 1, "skipped": 0, "failed": 1, "pending": 0}
    assert data["photos"][1]["error"] == "no face found" and data["photos"][1]["error_code"] == "no_face"
    assert data["options"]["formats"] == list(DEFAULT_FORMATS)
    assert not list(tmp_path.glob("o/*.tmp"))


def test_progress_lines_and_eta():
    now = [100.0]
    progress = Progress(4, clock=lambda: now[0])
    now[0] = 110.0               # 10 s of server start-up, not counted in the rate
    progress.begin()
    line = progress.line("skip.jpg", "skipped", processed=False)
    assert line.startswith("[1/4] skip.jpg: skipped") and "ETA --:--" in line
    now[0] = 120.0
    line = progress.line("a.jpg", "ok", "1 face")
    assert "[2/4] a.jpg: ok (1 face)" in line and "elapsed 00:20" in line and "ETA 00:20" in line
    now[0] = 130.0
    progress.line("b.jpg", "failed")
    line = progress.line("c.jpg", "ok")
    assert "[4/4]" in line and "ETA 00:00" in line
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "--:--"


# -------------------------------------------------------------------------------- request window

class FakeMessage:
    def __init__(self, request_id, error=None):
        self.id, self.error = request_id, error


class FakeClient:
    """Answers requests in order after ``latency`` seconds of a fake clock; records the in-flight count."""

    def __init__(self, clock, latency=1.0, replies=None, unreachable=False, stages=()):
        self.clock = clock
        self.latency = latency
        self.queue = []           # (ready_at, request_id, photo bytes)
        self.sent = []
        self.replies = replies or {}   # photo bytes -> error code, or "silent" (never answers)
        self.unreachable = unreachable
        self.stages = stages      # progress reports sent before each reply
        self.progress = {}        # request id -> on_progress callback
        self.abandoned = []
        self.counter = 0
        self.max_queue = 0

    def send(self, op, params, payloads, on_progress=None):
        if self.unreachable:
            raise ProtocolError(ErrorCode.UNREACHABLE, "no server")
        self.counter += 1
        request_id = f"r{self.counter}"
        start = max([self.clock.now] + [ready for ready, *_ in self.queue])  # the server works in order
        self.queue.append((start + self.latency, request_id, bytes(payloads["image"])))
        self.sent.append((request_id, bytes(payloads["image"]), self.clock.now))
        self.max_queue = max(self.max_queue, len(self.queue))
        self.progress[request_id] = on_progress
        return request_id

    def abandon(self, request_id):
        self.abandoned.append(request_id)

    def receive(self, timeout):
        while self.queue and self.replies.get(self.queue[0][2]) == "silent":
            self.queue.pop(0)
        if not self.queue or self.queue[0][0] > self.clock.now + timeout:
            self.clock.now += timeout
            raise ProtocolError(ErrorCode.TIMEOUT, "no reply")
        ready, request_id, data = self.queue.pop(0)
        self.clock.now = max(self.clock.now, ready)
        for stage in self.stages:
            if self.progress[request_id] is not None:
                self.progress[request_id](stage)
        code = self.replies.get(data)
        return FakeMessage(request_id, ProtocolError(code, "x") if code else None)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _photos(n, tmp_path=Path("/nonexistent")):
    return [Photo(path=tmp_path / f"p{i}.jpg", key=f"p{i}") for i in range(n)]


def _read(path):
    if "unreadable" in path.name:
        raise PermissionError(13, "Permission denied")
    return path.stem.encode()


def _drain(window, clock, build_s=0.0):
    events = []
    for photo, message, error in window.events():
        events.append((photo.key, "ok" if message is not None and message.error is None else
                       (message.error.code if message is not None else error[0])))
        clock.now += build_s  # the caller builds in Blender
    return events


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_window_keeps_jobs_in_the_pipeline(jobs):
    clock = FakeClock()
    client = FakeClient(clock, latency=1.0)
    window = Window(client, _photos(6), {"face": "largest"}, jobs=jobs, timeout=30, read=_read, clock=clock)
    events = _drain(window, clock, build_s=1.0)
    assert [k for k, _ in events] == [f"p{i}" for i in range(6)] and all(s == "ok" for _, s in events)
    assert window.max_in_flight == jobs  # at the start nothing is being built: all jobs at the server
    if jobs == 1:  # strictly serial: 6 x (1 s server + 1 s build)
        assert clock.now == pytest.approx(12.0)
    else:          # the server works while we build: ~6 s of server time + the last build
        assert clock.now == pytest.approx(7.0)


def test_window_sends_the_next_request_before_handing_out_a_reply():
    clock = FakeClock()
    client = FakeClient(clock, latency=1.0)
    window = Window(client, _photos(3), {}, jobs=2, timeout=30, read=_read, clock=clock)
    events = window.events()
    photo, message, error = next(events)
    assert photo.key == "p0" and message.id == "r1"
    assert [s[1] for s in client.sent] == [b"p0", b"p1"]  # p1 already at the server while we build p0


def test_window_reports_errors_unreadable_and_late_replies():
    clock = FakeClock()
    client = FakeClient(clock, latency=1.0, replies={b"p1": "no_face", b"p3": "silent"})
    photos = _photos(5)
    photos[2] = Photo(path=Path("/x/unreadable.jpg"), key="unreadable")
    window = Window(client, photos, {}, jobs=2, timeout=5, read=_read, clock=clock)
    events = dict(_drain(window, clock))
    assert events == {"p0": "ok", "p1": "no_face", "unreadable": ERR_UNREADABLE, "p3": "timeout", "p4": "ok"}
    assert client.abandoned == ["r3"]  # the timed-out request is cancelled at the server, not left running


def test_window_hands_progress_reports_to_the_caller():
    clock = FakeClock()
    stages = [{"stage": "detect", "text": "detecting faces", "fraction": 0.03},
              {"stage": "mesh", "text": "meshing", "fraction": 0.8}]
    client = FakeClient(clock, latency=1.0, stages=stages)
    seen = []
    window = Window(client, _photos(2), {}, jobs=2, timeout=5, read=_read, clock=clock,
                    on_progress=lambda photo, report: seen.append((photo.key, report["stage"])))
    assert dict(_drain(window, clock)) == {"p0": "ok", "p1": "ok"}
    assert seen == [("p0", "detect"), ("p0", "mesh"), ("p1", "detect"), ("p1", "mesh")]
    quiet = Window(FakeClient(clock, stages=stages), _photos(1), {}, jobs=1, timeout=5, read=_read, clock=clock)
    assert dict(_drain(quiet, clock)) == {"p0": "ok"}  # no callback asked for: none called


def test_window_retries_busy_replies():
    clock = FakeClock()
    client = FakeClient(clock, latency=1.0)
    busy_once = {"n": 0}
    original = client.receive

    def receive(timeout):
        message = original(timeout)
        if busy_once["n"] == 0:
            busy_once["n"] = 1
            message.error = ProtocolError(ErrorCode.BUSY, "queue full")
        return message

    client.receive = receive
    window = Window(client, _photos(2), {}, jobs=2, timeout=5, read=_read, clock=clock, sleep=lambda s: None)
    assert dict(_drain(window, clock)) == {"p0": "ok", "p1": "ok"}
    assert [s[1] for s in client.sent].count(b"p0") == 2


def test_window_sends_a_photo_again_once_when_its_worker_died():
    clock = FakeClock()
    client = FakeClient(clock, latency=1.0, replies={b"p1": ErrorCode.WORKER_LOST})  # p1 always kills its worker
    original, lost = client.receive, []

    def receive(timeout):
        message = original(timeout)
        if message.error is None and not lost:  # p0's first try: its worker was killed
            lost.append(message.id)
            message.error = ProtocolError(ErrorCode.WORKER_LOST, "worker died")
        return message

    client.receive = receive
    window = Window(client, _photos(3), {}, jobs=2, timeout=5, read=_read, clock=clock)
    assert dict(_drain(window, clock)) == {"p0": "ok", "p1": "worker_lost", "p2": "ok"}
    sent = [s[1] for s in client.sent]
    assert sent.count(b"p0") == 2 and sent.count(b"p1") == 2 and sent.count(b"p2") == 1


def test_window_aborts_when_the_server_is_unreachable_or_gone():
    clock = FakeClock()
    window = Window(FakeClient(clock, unreachable=True), _photos(3), {}, jobs=2, timeout=5, read=_read, clock=clock)
    assert [s for _, s in _drain(window, clock)] == ["unreachable"] * 3
    assert window.aborted[0] == "unreachable"

    clock = FakeClock()
    client = FakeClient(clock, latency=1.0, replies={b"p1": "silent", b"p2": "silent"})
    window = Window(client, _photos(4), {}, jobs=2, timeout=60, read=_read, clock=clock,
                    alive=lambda: clock.now < 3)
    events = _drain(window, clock)
    assert events[0] == ("p0", "ok")
    assert {k for k, s in events[1:] if s == ERR_SERVER_GONE} == {"p1", "p2", "p3"}
    assert clock.now < 10  # noticed within a receive slice, not after the 60 s timeout


# ----------------------------------------------------------------------------------------- files

def test_missing_modules_and_hint():
    assert missing_modules(["json", "no_such_module_ff"]) == ["no_such_module_ff"]
    hint = setup_hint(["numpy", "zmq"])
    assert "apt-get install python3-numpy python3-zmq" in hint and "pip install numpy pyzmq" in hint


# ------------------------------------------------------------------------------ user errors

def _launch(python: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(BATCH), "--", *args], capture_output=True, text=True, timeout=120,
                          env=env if env is not None else dict(os.environ))


def test_bad_option_is_refused_before_any_server_starts(tmp_path):
    mark = tmp_path / "server-started"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\ntouch {mark}\n")
    fake_python.chmod(0o755)
    (tmp_path / "a.jpg").write_bytes(b"x")
    result = _launch(sys.executable, "-i", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "out"),
                     "--python", str(fake_python), "--resolution", "4")
    assert result.returncode == Exit.USAGE
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: argument --resolution") and "[8, 400]" in errors[0]
    assert not mark.exists() and not (tmp_path / "out").exists()


def test_no_python_with_torch_is_one_error_line(tmp_path):
    system = "/usr/bin/python3"
    if not Path(system).exists() or missing_modules_in(system) or can_import_torch(system):
        pytest.skip(f"needs {system} with numpy and pyzmq and without torch (Debian's python3-zmq, python3-numpy)")
    (tmp_path / "a.jpg").write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if k not in ("FACEFORGE_PYTHON", "PYTHONPATH")}
    env["FACEFORGE_HOME"] = str(tmp_path)  # a home without .venv
    result = _launch(system, "-i", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "out"), env=env)
    assert result.returncode == Exit.SETUP, result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no Python with torch" in errors[0] and "--python" in errors[0]
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["pending"] == 1 and "no Python with torch" in summary["run"]["error"]


def test_unreadable_input_folder_is_one_error_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(path):  # what a folder without read permission does (this test may run as root)
        if path == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_iterdir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert run_batch_main(["batch.py", "--", "-i", str(folder), "-o", str(tmp_path / "out")]) == Exit.BAD_INPUT
    out = capsys.readouterr().out.splitlines()
    assert out == [f"error: cannot read {folder}: Permission denied"]


def missing_modules_in(python: str) -> bool:
    return subprocess.run([python, "-c", "import numpy, zmq"], capture_output=True).returncode != 0
