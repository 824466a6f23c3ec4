"""The batch's run: plan (find the photos, decide what is already done), start or reach a server,
process the photos through the request window, finish (summary, last line, exit status).

``bpy`` and ``zmq`` are imported only once the command line parsed and this Python was found to
have numpy and pyzmq, so ``--help`` and user errors work anywhere. ``bpy.app.timers`` never fire
while a background script blocks, so requests use the synchronous client with a deadline each.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

from ..wire.errors import ErrorCode, Exit, ProtocolError
from . import workers
from .blender import blender_chatter_to_stderr
from .cli import Options, missing_modules, parse_args, script_argv, setup_hint
from .inputs import discover, discover_people, shown
from .outputs import OutputLock, clean_stale_staging, decide, photo_dir
from .report import ERR_EXISTS, ERR_UNREADABLE, PhotoReport, Progress, Summary, format_duration


def say(text: str) -> None:
    print(text, flush=True)


class Stop(Exception):
    """The run cannot go on: one ``error:`` line, then exit with ``status``. ``photo_code``, when set,
    fails the photos not done yet with that code (else they stay pending in the summary)."""

    def __init__(self, status: Exit, text: str, photo_code: str | None = None):
        super().__init__(text)
        self.status, self.text, self.photo_code = status, text, photo_code


def main(argv=None) -> int:
    arguments = script_argv(sys.argv if argv is None else argv)
    try:
        opts = parse_args(arguments)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    missing = missing_modules()
    if missing:
        say(setup_hint(missing))
        return Exit.SETUP
    return Batch(opts, arguments).run()


class Batch:
    def __init__(self, opts: Options, argv: list | None = None):
        self.opts = opts
        self.argv = list(argv or [])  # the script's arguments, handed on to --workers children
        self.started = time.monotonic()
        self.summary = Summary(opts.summary_path, opts.recorded())
        self.progress: Progress | None = None
        self.todo: list = []          # photos to send, in order
        self.decisions: dict = {}     # photo key -> outputs.Decision
        self.reports: dict = {}       # photo key -> PhotoReport of the photos in ``todo``
        self.lock: OutputLock | None = None  # held on the output folder from planning to the end
        self.summary_failed = False           # an update of summary.json failed (said once)

    def run(self) -> int:
        try:
            self.plan()
        except Stop as stop:
            say(f"error: {stop.text}")
            if self.lock is not None:
                self.lock.release()
            return stop.status
        exit_code = Exit.OK
        try:
            with _signals_interrupt():
                if self.todo:
                    exit_code = self.process()
        except Stop as stop:
            say(f"error: {stop.text}")
            self.summary.run["error"] = stop.text
            self._close_pending(stop.photo_code, stop.text.splitlines()[0])
            exit_code = stop.status
        except KeyboardInterrupt:
            say("interrupted: stopping")
            self.summary.run["interrupted"] = True
            self._close_pending(None, "interrupted before it was done")
            exit_code = Exit.INTERRUPTED
        return self.finish(exit_code)

    # -- plan ----------------------------------------------------------------------------------
    def plan(self) -> None:
        """Find the photos, report the ones already done or in the way, keep the rest in ``todo``."""
        opts = self.opts
        if opts.shard is not None:  # a child of --workers: the parent planned these photos
            self.todo, self.decisions = workers.read_shard(opts.shard)
            self.reports = {p.key: PhotoReport(photo=shown(p.path), key=p.key) for p in self.todo}
            self.progress = Progress(len(self.todo))
            return
        try:
            if opts.same_person:
                photos, refused = discover_people(opts.inputs, output=opts.output, reserved=opts.reserved_names())
            else:
                photos, refused = discover(opts.inputs, output=opts.output, recursive=opts.recursive,
                                           reserved=opts.reserved_names())
        except OSError as exc:
            raise Stop(Exit.BAD_INPUT, f"cannot read {shown(exc.filename)}: {exc.strerror or exc}") from None
        if not photos and not refused:
            raise Stop(Exit.USAGE, f"no photos found in {', '.join(shown(path) for path in opts.inputs)}")
        try:
            opts.output.mkdir(parents=True, exist_ok=True)
            self.lock = OutputLock.take(opts.output)
        except OSError as exc:
            raise Stop(Exit.USAGE, f"cannot write to {shown(opts.output)}: {exc.strerror or exc}") from None
        if self.lock is None:
            raise Stop(Exit.USAGE, f"another batch is writing to {shown(opts.output)}: wait for it to finish, or "
                                   "give this one another --output")
        clean_stale_staging(opts.output)  # only ours: no other batch can be writing here now
        self.progress = Progress(len(photos) + len(refused))
        for path, reason in refused:
            self.record(PhotoReport(photo=shown(path), key="").fail(ERR_UNREADABLE, f"{shown(path)} {reason}"),
                        shown(path.name))
        for photo in photos:
            decision = decide(opts.output, photo, opts.formats, opts.overwrite)
            report = PhotoReport(photo=shown(photo.path), key=photo.key)
            if decision.action == "skip":
                self.record(_skipped(report, decision, photo_dir(opts.output, photo)), photo.name, processed=False)
            elif decision.action == "conflict":
                self.record(report.fail(ERR_EXISTS, decision.reason), photo.name, processed=False)
            else:
                self.todo.append(photo)
                self.decisions[photo.key] = decision
                self.reports[photo.key] = report

    def record(self, report: PhotoReport, name: str, processed: bool = True) -> None:
        """A photo is finished: its line on stdout, its entry in the summary (rewritten every time);
        a child of --workers hands the report to its parent instead."""
        if self.opts.shard is not None:
            say(workers.report_line(report))
            return
        self.summary.add(report)
        if report.status == "ok":
            detail = f"{report.faces} face{'s' if report.faces != 1 else ''}, {report.vertices} vertices"
            if report.note:
                detail += f", {report.note}"
        elif report.status == "skipped":
            detail = report.note or "already done"
        else:
            detail = f"{report.error_code}: {report.error}"
        say(self.progress.line(name, report.status, detail, processed=processed))
        self._write_summary()

    def _write_summary(self) -> bool:
        """Update summary.json; a failure is said once (to stderr) and the run goes on."""
        problem = self.summary.write()
        if problem is not None and not self.summary_failed:
            print(f"warning: cannot update {shown(self.opts.summary_path)} ({problem}); the run goes on, each "
                  "photo's own folder and manifest record what was done", file=sys.stderr, flush=True)
        self.summary_failed = self.summary_failed or problem is not None
        return problem is None

    # -- process -------------------------------------------------------------------------------
    def process(self) -> int:
        """Start or reach the server, then build and write every photo as its reply arrives."""
        from ..wire.client import Client

        if self.opts.ray:
            from . import distributed

            return distributed.process(self, say)
        count = 1 if self.opts.shard is not None else min(self.opts.workers, len(self.todo))
        with _server(self.opts, self.summary.run, len(self.todo)) as (server, address, info):
            self.summary.run.update(server=address, server_info=info, started_server=server is not None)
            say(f"server {address} ready ({info.get('device', '?')}); {len(self.todo)} photo(s) to do, "
                f"{self.progress.total - len(self.todo)} skipped or failed up front; jobs {self.opts.jobs}"
                + (f", workers {count}" if count > 1 else ""))
            if count > 1:
                return self._through_workers(server, address, count)
            with Client(address, timeout=self.opts.timeout, keys=_keys(self.opts)) as client:
                window = self._photos_through(client, server, address, info)
            if window.aborted is not None:
                if server is not None:
                    say("server log (last lines):\n" + server.log_tail(20))
                return Exit.SERVER
        return Exit.OK

    def _through_workers(self, server, address: str, count: int) -> int:
        """``count`` child batches on shards of the photos, all on this run's server."""
        shards = workers.deal(self.todo, count)
        paths = [self.opts.output / f"{workers.SHARD_PREFIX}{i}.json" for i in range(len(shards))]
        commands = []
        for path, photos in zip(paths, shards):
            workers.write_shard(path, photos, self.decisions)
            commands.append(workers.launcher() + workers.child_arguments(self.argv, address, path))
        self.summary.run["workers"] = len(shards)
        self.progress.begin()
        try:
            codes = workers.run_children(commands, self._record_child, self._child_facts, say, self.opts.verbose)
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
        status = workers.overall_exit(codes)
        if status == Exit.INTERRUPTED:
            raise KeyboardInterrupt("a worker was interrupted")
        if status == Exit.SERVER and server is not None:
            say("server log (last lines):\n" + server.log_tail(20))
        return status if status == Exit.SERVER else Exit.OK

    def _record_child(self, report: PhotoReport) -> None:
        if report.key in self.reports:
            self.reports[report.key] = report
        self.record(report, shown(Path(report.photo).name))

    def _child_facts(self, facts: dict) -> None:
        run = self.summary.run
        if facts.get("blender"):
            run["blender"] = facts["blender"]
        run["max_in_flight"] = max(run.get("max_in_flight") or 0, facts.get("max_in_flight") or 0)

    def _photos_through(self, client, server, address: str, info: dict):
        from ..data.meshdata import BuildSettings
        from ..server.process import listening
        from .blender import Blender
        from .window import Window
        from .writer import RunContext, handle_reply

        opts = self.opts
        with blender_chatter_to_stderr(not opts.verbose):
            blender = Blender()
        self.summary.run["blender"] = ".".join(map(str, blender.version))
        context = RunContext(opts, blender, BuildSettings(**opts.build), info, address, client.model_arrays)
        self.progress.begin()
        alive = (lambda: server.running) if server is not None else listening(address)
        window = Window(client, self.todo, opts.request, jobs=opts.jobs, timeout=opts.timeout, alive=alive,
                        on_progress=_show_stage if opts.verbose else None)
        for photo, message, error in window.events():
            report = self.reports[photo.key]
            if error is not None:
                report.fail(*error)
                report.timings_s["handle"] = 0.0
            else:
                with blender_chatter_to_stderr(not opts.verbose):
                    handle_reply(context, photo, message, self.decisions[photo.key], report)
            self.record(report, photo.name)
        self.summary.run["max_in_flight"] = window.max_in_flight
        return window

    # -- finish --------------------------------------------------------------------------------
    def _close_pending(self, code: str | None, text: str) -> None:
        """Photos never done: failed with ``code`` (and a line each), or left pending in the summary."""
        for photo in self.todo:
            report = self.reports[photo.key]
            if report.status != "pending":
                continue
            if code is None:
                report.note = text
                self.summary.add(report)
            else:
                self.record(report.fail(code, text), photo.name)

    def finish(self, exit_code: int) -> int:
        summary = self.summary
        if self.opts.shard is not None:  # a child of --workers: its parent writes the summary
            say(workers.run_line(summary.run))
            failed = any(r.status == "failed" for r in self.reports.values())
            return int(Exit.FAILED if exit_code == Exit.OK and failed else exit_code)
        summary.finished = exit_code != Exit.INTERRUPTED
        summary.run["elapsed_s"] = round(time.monotonic() - self.started, 3)
        written = self._write_summary()
        if self.lock is not None:
            self.lock.release()
        counts = summary.counts()
        pending = f", {counts['pending']} not done" if counts.get("pending") else ""
        say(f"done: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed{pending} "
            f"in {format_duration(time.monotonic() - self.started)}; summary {shown(self.opts.summary_path)}")
        if exit_code == Exit.OK and counts["failed"]:
            exit_code = Exit.FAILED
        if not written:
            say(f"error: the summary {shown(self.opts.summary_path)} could not be written; the photos' folders "
                "and manifests are the record of this run")
            exit_code = exit_code or Exit.FAILED
        return int(exit_code)


def _skipped(report: PhotoReport, decision, folder) -> PhotoReport:
    """A photo already done: its report from the manifest of the earlier run."""
    manifest = decision.manifest or {}
    report.status, report.note = "skipped", "already done; --overwrite redoes it"
    report.faces, report.vertices = int(manifest.get("faces", 0)), int(manifest.get("vertices", 0))
    report.face_details = manifest.get("face_details", [])
    report.outputs = [str(folder / name) for name in manifest.get("files", [])]
    return report


def _show_stage(photo, progress: dict) -> None:
    """--verbose: one indented line per server stage of a photo."""
    say(f"    {photo.name}: {progress.get('text') or progress.get('stage')} ({float(progress.get('fraction', 0)):.0%})")


@contextlib.contextmanager
def _server(opts: Options, run_info: dict, todo: int = 1):
    """``(server, address, info)``: a server started for this run (stopped on the way out, also on
    errors and Ctrl-C), or ``(None, --server, its info)``. Raises ``Stop`` when neither works."""
    if opts.server is not None:
        yield None, opts.server, _server_info(opts.server, opts.timeout, _keys(opts))
        return
    started = time.perf_counter()
    server = _start_server(opts, todo)
    run_info["server_start_s"] = round(time.perf_counter() - started, 3)
    try:
        yield server, server.address, server.info
    finally:
        try:
            server.stop()
        except Exception as exc:
            say(f"warning: stopping the server: {exc}")


def _start_server(opts: Options, todo: int):
    from ..server.process import find_python, start_local_server

    python = find_python(opts.python)
    if python is None:
        raise Stop(Exit.SETUP, "no Python with torch for the inference server: pass --python, set "
                               "FACEFORGE_PYTHON, create the checkout's .venv (./run setup), or pass --server ADDR")
    log_path = opts.output / ".faceforge-server.log"
    blenders = min(opts.workers, todo)
    say(f"starting a local server: {python} (log {log_path})")
    try:
        server = start_local_server(python, str(log_path), opts.server_timeout, device=opts.device,
                                    extra_args=("--threads", str(workers.server_threads(blenders)),
                                                "--workers", str(workers.server_workers(blenders))))
    except Exception as exc:
        raise Stop(Exit.SERVER, f"the local server did not start: {exc}", ErrorCode.UNREACHABLE) from exc
    say(f"local server on {server.address}")
    return server


def _keys(opts: Options):
    """The CURVE keys the options name (None: a plain connection); a bad key file is a usage error."""
    from ..wire import security

    try:
        return security.client_keys(opts.server_key, opts.client_key)
    except security.KeyFileError as exc:
        raise Stop(Exit.USAGE, str(exc), ErrorCode.BAD_REQUEST) from None


def _server_info(address: str, timeout: float, keys=None) -> dict:
    from ..wire.client import Client

    try:
        with Client(address, timeout=timeout, keys=keys) as client:
            return client.info(timeout=min(30.0, timeout))
    except ProtocolError as exc:
        raise Stop(Exit.SERVER, f"server {address}: {exc}", ErrorCode.UNREACHABLE) from exc


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT, SIGTERM and SIGHUP end the run like Ctrl-C (the started server is stopped on the way
    out); the previous handlers come back afterwards."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        try:
            previous[sig] = signal.signal(sig, _interrupt)
        except (ValueError, OSError, AttributeError):
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            try:  # a handler installed from C reads back as None: restore the default then
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (TypeError, ValueError, OSError):
                pass
