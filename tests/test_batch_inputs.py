"""What a folder of photos may hold besides photos, and an output folder the batch shares with others.

Unit tests of ``addon.batch.inputs`` / ``outputs`` on real file-system entries (FIFOs, links to
devices, link loops, sparse giants, names that are not UTF-8 or hold a newline), then real batches
(bpy from PyPI against the session's real server) on such a folder, on a locked output folder and
with a summary that cannot be written.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from addon.batch import outputs
from addon.batch.inputs import MAX_PHOTO_BYTES, assign_keys, discover, discover_people, read_photo, shown
from addon.batch.report import Summary
from addon.wire.errors import Exit
from tests.batch_fixtures import load_summary, needs_bpy, python_command, run_batch

CHEAP = ("--geometry", "face", "--resolution", "60", "--formats", "glb")


def odd_folder(folder: Path, photo: bytes) -> dict:
    """Entries named like photos that are not readable photos, next to real ones; returns the refusal
    expected for each odd entry's name."""
    folder.mkdir()
    (folder / "real.png").write_bytes(photo)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    with open(folder / "giant.png", "wb") as giant:  # sparse: no disk used
        giant.truncate(MAX_PHOTO_BYTES + 1)
    return {"fifo.jpg": "not a regular file", "zero.jpg": "not a regular file", "loop.jpg": "loops or points nowhere",
            "gone.jpg": "loops or points nowhere", "giant.png": "over the batch's limit of 256 MB per photo"}


def test_only_regular_files_of_bounded_size_are_photos_and_the_rest_is_said(tmp_path, astronaut_png):
    """A FIFO named *.jpg hung the former batch, a link to /dev/zero grew it to gigabytes, a link loop
    ended it with a traceback before any photo."""
    expected = odd_folder(tmp_path / "photos", astronaut_png)
    started = time.monotonic()
    photos, refused = discover([tmp_path / "photos", tmp_path / "photos" / "fifo.jpg"])
    assert time.monotonic() - started < 2
    assert [photo.name for photo in photos] == ["real.png"]
    reasons = {path.name: why for path, why in refused}
    assert set(reasons) == set(expected) and all(expected[name] in reasons[name] for name in expected), reasons


def test_reading_a_photo_never_blocks_or_runs_away(tmp_path):
    """Checked again on the open file: a FIFO swapped in after discovery is refused at once, not waited on."""
    os.mkfifo(tmp_path / "swapped.jpg")
    done = threading.Event()
    outcome = {}

    def read():
        try:
            read_photo(tmp_path / "swapped.jpg")
        except OSError as exc:
            outcome["error"] = str(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5) and "not a regular file" in outcome["error"]
    (tmp_path / "big.jpg").write_bytes(b"x" * 2000)
    with pytest.raises(OSError, match="over the batch's limit"):
        read_photo(tmp_path / "big.jpg", max_bytes=1000)
    assert read_photo(tmp_path / "big.jpg") == b"x" * 2000


def test_names_stay_on_one_printable_line_and_keys_stay_safe():
    undecodable = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name on a UTF-8 system
    assert shown(undecodable) == "caf\\udce9.png" and shown("two\nlines.jpg") == "two\\nlines.jpg"
    assert shown("tab\there\x1b[31m.jpg") == "tab\\there\\x1b[31m.jpg" and shown("élan.jpg") == "élan.jpg"
    keys = assign_keys([Path(undecodable), Path("two\nlines.jpg"), Path("x.j\npg")])
    assert all(key.isprintable() and "\n" not in key for key in keys) and all(key.encode() for key in keys)


def test_the_batch_s_own_names_are_never_a_photo_s():
    """``summary.json.jpg`` became the folder ``summary.json`` and ``summary.json.tmp.jpg`` the folder in the
    way of the summary's temporary file: the batch crashed, and every re-run until removed by hand."""
    keys = assign_keys([Path("summary.json.jpg"), Path("SUMMARY.JSON.png"), Path("summary.json.tmp.jpg")],
                       reserved=("summary.json",))
    assert "summary.json" not in [key.lower() for key in keys] and keys[2] == "summary.json.tmp"
    assert not any(key.startswith(".") for key in keys)  # the batch's own files all start with a dot


def test_one_batch_per_output_folder(tmp_path):
    first = outputs.OutputLock.take(tmp_path)
    assert first is not None and outputs.OutputLock.take(tmp_path) is None
    first.release()
    again = outputs.OutputLock.take(tmp_path)
    assert again is not None
    again.release()


def test_a_summary_that_cannot_be_written_costs_the_update_not_the_run(tmp_path):
    from addon.batch.cli import parse_args

    opts = parse_args(["--input", str(tmp_path), "--output", str(tmp_path / "out")])
    blocked = Summary(Path("/dev/full/summary.json"), opts.recorded())  # its folder is a device: every write fails
    assert blocked.write() == "File exists"  # the reason, not an exception
    summary = Summary(tmp_path / "out" / "summary.json", opts.recorded())
    assert summary.write() is None and json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob(".*.tmp"))


@needs_bpy
def test_a_batch_over_odd_entries_and_odd_names_reports_each_and_does_the_rest(tmp_path, astronaut_png,
                                                                               grace_hopper_jpg, server_address):
    folder = tmp_path / "photos"
    expected = odd_folder(folder, astronaut_png)
    for name in (b"caf\xe9.png", b"two\nlines.png"):
        (folder / os.fsdecode(name)).write_bytes(astronaut_png)
    for name in ("summary.json.jpg", "summary.json.tmp.jpg"):
        (folder / name).write_bytes(grace_hopper_jpg)
    output = tmp_path / "out"
    command = python_command("--input", str(folder), "--output", str(output), "--server", server_address, *CHEAP)
    first = run_batch(command)
    assert first.returncode == Exit.FAILED  # the odd entries failed; every photo was done
    lines = [line for line in first.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 5 + len(expected) and all("| elapsed" in line for line in lines), first.stdout
    summary = load_summary(output)
    assert summary["counts"] == {"ok": 5, "skipped": 0, "failed": len(expected), "pending": 0}
    failed = {Path(entry["photo"]).name: entry["error"] for entry in summary["photos"] if entry["status"] == "failed"}
    assert all(expected[name] in failed[name] for name in expected), failed
    names = {Path(entry["photo"]).name for entry in summary["photos"] if entry["status"] == "ok"}
    assert names == {"real.png", "caf\\udce9.png", "two\\nlines.png", "summary.json.jpg", "summary.json.tmp.jpg"}
    assert (output / "summary.json").is_file() and (output / "summary.json.tmp" / outputs.MANIFEST).is_file()
    assert not list(output.glob(".*.tmp"))  # the summary's own temporary file is dotted, and gone
    again = run_batch(command)  # and the re-run works too: the photos done are skipped
    assert again.returncode == Exit.FAILED and load_summary(output)["counts"]["skipped"] == 5


@needs_bpy
def test_a_second_batch_on_a_busy_output_folder_refuses_and_leaves_it_alone(tmp_path, astronaut_png, server_address):
    """Two batches on one folder: the starting one deleted the other's staging folders as stale (9 of
    12 photos failed) and both raced on the summary."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(astronaut_png)
    output = tmp_path / "out"
    output.mkdir()
    staging = output / f"{outputs.STAGING_PREFIX}other-batch-photo"
    staging.mkdir()
    holder = outputs.OutputLock.take(output)  # the batch already running there
    try:
        second = run_batch(python_command("--input", str(tmp_path / "photos"), "--output", str(output), "--server",
                                          server_address, *CHEAP))
    finally:
        holder.release()
    assert second.returncode == Exit.USAGE and "another batch is writing to" in second.stdout
    assert staging.is_dir() and not (output / "summary.json").exists() and not (output / "a").exists()


@needs_bpy
def test_a_batch_whose_summary_cannot_be_written_still_does_every_photo(tmp_path, astronaut_png, server_address):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(astronaut_png)
    result = run_batch(python_command("--input", str(tmp_path / "photos"), "--output", str(tmp_path / "out"),
                                      "--server", server_address, "--summary", "/dev/full/summary.json", *CHEAP))
    assert result.returncode == Exit.FAILED and "Traceback" not in result.stderr
    assert result.stderr.count("warning: cannot update /dev/full/summary.json") == 1
    assert "error: the summary /dev/full/summary.json could not be written" in result.stdout
    assert outputs.read_manifest(tmp_path / "out" / "a")["status"] == "ok"


def test_same_person_makes_each_sub_folder_one_person(tmp_path):
    """--same-person: a sub-folder's photos (not its videos, not its own sub-folders) are one person,
    loose photos one each; the output folder inside an input is left alone; a person is keyed by its folder."""
    root = tmp_path / "in"
    for name in ("alice/front.jpg", "alice/left.png", "alice/clip.mp4", "alice/deeper/x.jpg", "bob/only.jpg",
                 "carol.jpg", ".hidden/a.jpg", "empty/notes.txt", "out/old/old.jpg"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    os.mkfifo(root / "alice" / "pipe.jpg")
    people, refused = discover_people([root], output=root / "out")
    assert [(p.key, [m.name for m in p.members]) for p in people] == [
        ("alice", ["front.jpg", "left.png"]), ("bob", ["only.jpg"]), ("carol", [])]
    assert people[0].path == (root / "alice").absolute() and not people[2].is_video
    assert [(path.name, "FIFO" in why) for path, why in refused] == [("pipe.jpg", True)]
