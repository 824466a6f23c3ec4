"""``--workers N``: several Blender processes on shards of one batch, one server, one progress
display, one summary, resume and Ctrl-C -- real photos, a real server, Debian's Blender and bpy."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from addon.batch import workers
from addon.batch.inputs import Photo
from addon.batch.outputs import Decision
from addon.batch.report import PhotoReport
from addon.wire.errors import Exit
from tests.batch_fixtures import (blender_command, by_key, load_summary, needs_blender, needs_bpy, python_command,
                                  interrupt, run_batch, start_until_ready)
from tests.photo_fixtures import photo_folder  # noqa: F401 (fixture)

PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\] (\S+): (ok|skipped|failed)\b.*\| elapsed \d+:\d\d \| ETA")


def _progress(stdout: str) -> list:
    return [m.groups() for m in map(PROGRESS.match, stdout.splitlines()) if m]


def _processes_reading(path: Path) -> list:
    """Pids whose command line names ``path`` (the children's shard files)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path) in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


# ---------------------------------------------------------------------------------- bpy-free parts

def test_default_workers_is_one_per_two_cores():
    assert [workers.default_workers(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 8]


def test_a_started_server_gets_a_model_worker_per_blender_worker_within_the_cores():
    cases = [(1, 2), (2, 2), (2, 4), (4, 8), (8, 16), (8, 12), (4, 64)]  # (Blender workers, cores)
    plenty = 64 << 30
    assert [workers.server_workers(w, c, plenty) for w, c in cases] == [1, 1, 2, 4, 8, 4, 4]
    assert workers.server_workers(8, 16, 5 << 30) == 2  # 5 GB free: two model workers, not eight
    assert workers.server_workers(8, 16, 0) == 8        # free memory unknown: the cores decide
    with open("/proc/meminfo") as meminfo:  # Linux: what it calls available, not merely free
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    assert abs(workers.available_memory() - available) < 1 << 28
    assert [workers.server_threads(w, c) for w, c in cases] == [1, 1, 2, 4, 8, 4, 60]


def test_deal_round_robin_and_shards_round_trip(tmp_path):
    photos = [Photo(path=tmp_path / f"p{i}.jpg", key=f"p{i}") for i in range(5)]
    assert [[p.key for p in shard] for shard in workers.deal(photos, 2)] == [["p0", "p2", "p4"], ["p1", "p3"]]
    assert len(workers.deal(photos[:1], 3)) == 1  # no empty shards
    decisions = {p.key: Decision("run", "add formats glb", missing_formats=("glb",)) for p in photos}
    workers.write_shard(tmp_path / "shard.json", photos[:2], decisions)
    back, back_decisions = workers.read_shard(tmp_path / "shard.json")
    assert back == photos[:2] and back_decisions["p1"].missing_formats == ("glb",)
    assert back_decisions["p1"].reason == "add formats glb"


def test_child_arguments_point_at_the_parents_server():
    argv = ["--input", "in", "--start-server", "--workers", "3", "--summary=s.json", "--formats", "blend,glb", "-j", "1"]
    child = workers.child_arguments(argv, "tcp://127.0.0.1:9", Path("/o/.faceforge-shard-0.json"))
    assert child == ["--input", "in", "--formats", "blend,glb", "-j", "1", "--server", "tcp://127.0.0.1:9",
                     "--workers", "1", "--shard", "/o/.faceforge-shard-0.json"]


def test_report_lines_and_exit_codes():
    report = PhotoReport(photo="/p/a.jpg", key="a", status="ok", faces=1, timings_s={"build": 0.1})
    assert workers.parse_line(workers.report_line(report)) == report
    assert workers.parse_line(workers.run_line({"blender": "3.4.1", "max_in_flight": 2})) == {
        "blender": "3.4.1", "max_in_flight": 2}
    assert workers.parse_line("Blender 3.4.1") is None
    assert workers.overall_exit([Exit.OK, Exit.FAILED]) == Exit.OK  # photo failures are counted by the parent
    assert workers.overall_exit([Exit.OK, Exit.SERVER, Exit.INTERRUPTED]) == Exit.SERVER
    assert workers.overall_exit([Exit.INTERRUPTED, Exit.OK]) == Exit.INTERRUPTED
    assert workers.overall_exit([Exit.OK, -9]) == Exit.FAILED  # a child that crashed


# ------------------------------------------------------------------------------------ end to end

@needs_bpy
def test_python_bpy_two_workers_one_summary_then_resume(photo_folder, server_address, tmp_path):
    """Two good photos, one without a face, one corrupt: two children, one progress line per photo,
    one summary; the re-run skips what is done without starting any child."""
    output = tmp_path / "out"
    args = ["--input", str(photo_folder), "--output", str(output), "--server", server_address, "--workers", "2",
            "--formats", "blend,glb"]
    first = run_batch(python_command(*args))
    assert first.returncode == Exit.FAILED
    lines = _progress(first.stdout)
    assert [(done, total) for done, total, *_ in lines] == [("1", "4"), ("2", "4"), ("3", "4"), ("4", "4")]
    assert "workers 2" in first.stdout and workers.REPORT_PREFIX not in first.stdout
    summary = load_summary(output)
    assert summary["counts"] == {"ok": 2, "skipped": 0, "failed": 2, "pending": 0} and summary["finished"]
    assert summary["run"]["workers"] == 2 and summary["run"]["blender"].startswith(("4.", "5."))
    photos = by_key(summary)
    assert photos["corrupt"]["error_code"] == "bad_image" and photos["coffee_no_face"]["error_code"] == "no_face"
    for key in ("astronaut", "grace_hopper"):
        assert photos[key]["status"] == "ok" and photos[key]["timings_s"]["build"] > 0
        assert {Path(p).name for p in photos[key]["outputs"]} >= {f"{key}.blend", f"{key}.glb"}
    assert not list(output.glob(workers.SHARD_PREFIX + "*"))
    stamp = (output / "astronaut" / "astronaut.blend").stat().st_mtime_ns

    again = run_batch(python_command(*args))
    assert again.returncode == Exit.FAILED  # the bad photos are tried again, and fail again
    assert load_summary(output)["counts"] == {"ok": 0, "skipped": 2, "failed": 2, "pending": 0}
    assert (output / "astronaut" / "astronaut.blend").stat().st_mtime_ns == stamp


@needs_blender
def test_blender_workers_stop_with_their_server_on_sigint(photo_folder, tmp_path):
    """Debian's Blender as the parent, a server it started, two children: Ctrl-C stops all of them."""
    output = tmp_path / "out"
    process, lines = start_until_ready(blender_command("--input", str(photo_folder), "--output", str(output),
                                                      "--device", "cpu", "--workers", "2"))
    try:
        assert any("workers 2" in line for line in lines), "".join(lines)
        time.sleep(1.0)  # the children are starting
        children = _processes_reading(output / workers.SHARD_PREFIX)
    except BaseException:
        process.kill()
        raise
    summary = interrupt(process, lines, output, timeout=90)
    assert sum(summary["counts"].values()) == 4
    assert children and not [pid for pid in children if os.path.exists(f"/proc/{pid}")], "a worker outlived the run"
    assert not [p for p in output.iterdir() if p.name.startswith((".faceforge-partial-", workers.SHARD_PREFIX))]
