"""Batch throughput, old and new code side by side in one run: photos per second, and per photo
Blender's build+write time against the server's compute time.

    .venv/bin/python benchmarks/bench_batch.py [--photos 8] [--runs SPEC ...] [--baseline 9172a33]
        [--blender /usr/bin/blender | --blender python] [--server ADDR] [-- EXTRA BATCH ARGS]

A run SPEC is ``CODE:WORKERS:FORMATS`` -- CODE ``new`` (this checkout) or ``old`` (``--baseline``,
unpacked with ``git archive`` into a temporary folder; it has no --workers), FORMATS a list or
``all`` (blend,glb,obj,ply,stl: the formats both have). The default runs compare old and new with
one worker for blend,glb (the issue's baseline), then new with 2 workers, blend alone and all.

The folder holds the two real test photos (skimage's astronaut, matplotlib's Grace Hopper) and
flipped / rescaled / re-encoded variants, so every photo is a distinct request. One server
(started here on the CPU unless --server is given) serves every run, so model loading is not
counted; each run writes into a fresh folder. Per run it prints photos/s (wall clock of the whole
command, Blender's start included), and per photo: Blender's build+write wall time (summary.json
``handle``) next to the server's compute time (``server_timings_ms``) from the same run, and the
CPU seconds of the batch's processes (parent + workers; start-up excluded: the same command is run
again on the finished folder, where it skips every photo, and that CPU time is subtracted) and of
the server process. The machine's load average is printed with every run: on a shared machine
compare within one invocation only.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL = "blend,glb,obj,ply,stl"
DEFAULT_RUNS = ("old:1:blend,glb", "new:1:blend,glb", "new:2:blend,glb", "new:1:blend", "old:1:blend", "new:1:all",
                "old:1:all")


def make_photos(folder: Path, count: int) -> list:
    import matplotlib
    import numpy as np
    from PIL import Image
    from skimage import data

    sources = [("astronaut", Image.fromarray(data.astronaut())),
               ("grace_hopper", Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))]
    variants = [("orig", lambda im: im), ("flip", lambda im: im.transpose(Image.FLIP_LEFT_RIGHT))]
    for scale in (0.75, 1.25, 1.5, 0.6):
        variants.append((f"s{int(scale * 100)}", lambda im, s=scale: im.resize((int(im.width * s), int(im.height * s)),
                                                                               Image.LANCZOS)))
        variants.append((f"s{int(scale * 100)}flip", lambda im, s=scale: im.transpose(Image.FLIP_LEFT_RIGHT).resize(
            (int(im.width * s), int(im.height * s)), Image.LANCZOS)))
    written = []
    i = 0
    while len(written) < count:
        name, image = sources[i % len(sources)]
        tag, make = variants[(i // len(sources)) % len(variants)]
        rounds = i // (len(sources) * len(variants))
        out = make(image)
        if rounds:  # more photos than variants: nudge brightness so the bytes differ
            out = Image.fromarray(np.clip(np.asarray(out, dtype=np.int16) + 3 * rounds, 0, 255).astype(np.uint8))
        path = folder / f"{i:03d}_{name}_{tag}{'_r%d' % rounds if rounds else ''}.{'jpg' if i % 2 else 'png'}"
        buf = io.BytesIO()
        out.save(buf, "JPEG" if path.suffix == ".jpg" else "PNG", **({"quality": 92} if path.suffix == ".jpg" else {}))
        path.write_bytes(buf.getvalue())
        written.append(path)
        i += 1
    return written


def start_server(threads: int):
    from addon.server.process import LocalServer, find_python, free_address

    python = find_python()
    if python is None:
        raise SystemExit("error: no Python with torch for the server: set FACEFORGE_PYTHON or run ./run setup")
    server = LocalServer(python, free_address(), cwd=str(ROOT), device="cpu",
                         extra_args=("--threads", str(threads)) if threads else ())
    server.start(300)
    return server


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a running process (Linux /proc); 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def unpack_baseline(commit: str, folder: Path) -> Path:
    """The batch as it was at ``commit``: ``git archive`` into ``folder`` (no worktree is touched)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def launcher(blender: str, root: Path) -> list:
    script = str(root / "scripts" / "batch.py")
    if blender == "python":
        return [sys.executable, script, "--"]
    return [blender, "-b", "--factory-startup", "--python-exit-code", "1", "-P", script, "--"]


def run_once(command: list, cwd: Path, output: Path, server_pid: int | None, photos: int) -> dict:
    cpu, server_cpu, load = children_cpu_s(), process_cpu_s(server_pid), os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - started
    figures = {"wall": wall, "cpu": children_cpu_s() - cpu, "server_cpu": process_cpu_s(server_pid) - server_cpu,
               "load": (load + os.getloadavg()[0]) / 2, "exit": result.returncode}
    summary = json.loads((output / "summary.json").read_text()) if (output / "summary.json").exists() else {}
    ok = [p for p in summary.get("photos", []) if p["status"] == "ok"]
    if result.returncode != 0 or len(ok) != photos:
        print(result.stdout[-3000:], result.stderr[-3000:])
        raise SystemExit(f"error: {' '.join(command[-12:])}: exit {result.returncode}, {len(ok)}/{photos} ok")
    figures["handle"] = sum(p["timings_s"].get("handle", 0.0) for p in ok) / len(ok)
    figures["server"] = sum(sum(p["server_timings_ms"].values()) for p in ok) / len(ok) / 1000
    cpu = children_cpu_s()
    subprocess.run(command, capture_output=True, cwd=cwd)  # again: every photo skipped, what is left is start-up
    figures["fixed_cpu"] = children_cpu_s() - cpu
    return figures


def print_ratios(table: dict) -> None:
    """Each run of the new code against the old code's run with the same formats."""
    for (code, workers, formats), r in table.items():
        old = table.get(("old", 1, formats))
        if code == "new" and old is not None:
            print(f"new {workers} worker(s) vs old, {formats}: {old['wall'] / r['wall']:.2f}x photos/s, "
                  f"{(old['cpu'] - old['fixed_cpu']) / (r['cpu'] - r['fixed_cpu']):.2f}x less batch CPU per photo, "
                  f"build+write {old['handle'] / r['handle']:.2f}x faster")


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="CODE:WORKERS:FORMATS")
    parser.add_argument("--baseline", default="9172a33", help="commit of the old batch (default %(default)s)")
    parser.add_argument("--blender", default="/usr/bin/blender" if Path("/usr/bin/blender").exists() else "python",
                        help="Blender binary, or 'python' for this interpreter with bpy from PyPI")
    parser.add_argument("--server", help="use a running server instead of starting one")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="torch threads of the started server (default: what a batch gives the server it "
                             "starts, addon.batch.workers.server_threads; 0: torch's default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parse_args(argv)
    specs = [(code, int(workers), ALL if formats == "all" else formats)
             for code, workers, formats in (spec.split(":", 2) for spec in args.runs)]

    work = Path(tempfile.mkdtemp(prefix="faceforge-bench-batch-"))
    server = None
    try:
        photos_dir = work / "photos"
        photos_dir.mkdir()
        photos = make_photos(photos_dir, args.photos)
        roots = {"new": ROOT}
        if any(code == "old" for code, *_ in specs):
            roots["old"] = unpack_baseline(args.baseline, work / "old")
        address = args.server
        if address is None:
            started = time.perf_counter()
            from addon.batch.workers import server_threads

            threads = server_threads(1) if args.server_threads is None else args.server_threads
            server = start_server(threads)
            address = server.address
            print(f"server {address} started in {time.perf_counter() - started:.1f} s (CPU, {threads or 'default'} "
                  f"torch threads; not counted)")
        print(f"{len(photos)} photos, {args.blender}, {os.cpu_count()} CPU cores, baseline {args.baseline}, "
              f"extra {extra or '-'}")
        print(f"{'code':<4} {'workers':>7} {'formats':<20} {'photos/s':>8}  per photo: {'build+write s':>13} "
              f"{'server s':>8} {'ratio':>5}  {'batch CPU s':>11} {'server CPU s':>12}  load")
        table = {}
        for index, (code, workers, formats) in enumerate(specs):
            output = work / f"out{index}"
            command = launcher(args.blender, roots[code]) + [
                "--input", str(photos_dir), "--output", str(output), "--server", address, "--formats", formats,
                "--jobs", "2", *(["--workers", str(workers)] if code == "new" else []), *extra]
            r = run_once(command, roots[code], output, server.pid if server else None, len(photos))
            table[(code, workers, formats)] = r
            n = len(photos)
            print(f"{code:<4} {workers:>7} {formats:<20} {n / r['wall']:>8.3f}  {'':>10} {r['handle']:>13.3f} "
                  f"{r['server']:>8.3f} {r['handle'] / r['server']:>5.2f}  {(r['cpu'] - r['fixed_cpu']) / n:>11.3f} "
                  f"{r['server_cpu'] / n:>12.3f}  {r['load']:.2f}", flush=True)
        print_ratios(table)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
