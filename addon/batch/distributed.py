"""The batch on Ray (``--ray ADDRESS``). Model actors reconstruct; writer actors build and write with bpy.

The plan, the per-photo lines, summary.json, resume and the exit statuses stay the batch's own
(``run.Batch``); only the middle differs from a run against one server.
- Each model actor holds one ``FacePipeline``, on CUDA when Ray gave it a GPU.
- Each writer actor holds one Blender (the bpy module) and writes with ``writer.handle_reply``, so the
  files are the plain batch's.
- A reply goes from its model actor to a writer through Ray's object store; this process never holds
  it. At most two photos per model actor are in flight, so memory stays bounded for any number of
  photos.
- A photo whose actor or node was lost is sent once more to the actors left. A second loss reports it
  failed (``worker_lost``), and so does a photo that gets no answer within ``--timeout``.

Ray imports this module and the project by name on every node: each node needs the same packages, and
the photos and output folder on storage every node sees.
"""
from __future__ import annotations

import sys
from collections import Counter

from ..wire.errors import ErrorCode, Exit
from .inputs import Photo, shown
from .report import PhotoReport, unreadable

IN_FLIGHT_PER_MODEL = 2   # one reconstructing, one waiting: the model actor never idles while a writer writes
PING_TIMEOUT_S = 120.0    # a restarted model actor loads its models again before it answers


def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class ModelActor:
    """One pipeline (torch, MTCNN, FaceMesh, the installed head model) on the device Ray gave this actor."""

    def __init__(self, request: dict, device: str, threads: int):
        from inference_server.config import ReconstructionConfig
        from inference_server.head import store
        from inference_server.recipe import PipelineRecipe

        self.pipeline = PipelineRecipe(device, ReconstructionConfig(), store.find_model(), threads=threads)()
        self.config = ReconstructionConfig().with_params(request)

    def info(self) -> dict:
        return dict(self.pipeline.info(), node=_node())

    def head_model_arrays(self):
        return self.pipeline.head_model_arrays()

    def reconstruct(self, photo: Photo) -> dict:
        """The reply's frames, exactly as the server would send them, or why there is none."""
        from inference_server.workers import reply_frames, run_request

        from ..data.photo import read_photo
        from ..wire import protocol
        from ..wire.errors import ProtocolError

        answer = {"frames": None, "error": None, "node": _node()}
        try:
            media = [read_photo(str(path)) for path in (photo.members or (photo.path,))]
        except OSError as exc:
            answer["error"] = unreadable(photo.name, exc)
            return answer
        try:
            result = run_request(self.pipeline, media, self.config, photo.is_video)
            frames = reply_frames(photo.key, result)
        except ProtocolError as exc:
            frames = protocol.encode_error(photo.key, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - the actor serves the other photos
            answer["error"] = (ErrorCode.INTERNAL, f"{exc.__class__.__name__}: {exc}")
            return answer
        answer["frames"] = [bytes(protocol.frame_bytes(frame)) for frame in frames]
        return answer


class WriterActor:
    """One Blender session: a reply -> the photo's objects -> its files, moved into place."""

    def __init__(self, opts):
        """Blender starts while the model actors load their models; their ``info`` is asked for with the first photo.
        The model actors come with each photo, not here: actor handles among a constructor's arguments would have
        to outlive a restart in the object store."""
        from ..data.meshdata import BuildSettings
        from .blender import Blender, blender_chatter_to_stderr
        from .writer import RunContext

        with blender_chatter_to_stderr(not opts.verbose):
            blender = Blender()
        self.models, self.shared = [], {}
        self.context = RunContext(opts, blender, BuildSettings(**opts.build), {}, "ray", self.model_arrays)

    def _ask_models(self, method: str):
        """The first answer of a model actor to ``method`` (another may have been lost with its node); None if none."""
        import ray

        for model in self.models:
            try:
                return ray.get(getattr(model, method).remote(), timeout=PING_TIMEOUT_S)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                continue
        return None

    def model_arrays(self, fingerprint: str) -> dict:
        """What every head of the model shares (topology, UVs, expressions): asked of a model actor once."""
        if fingerprint not in self.shared:
            found = self._ask_models("head_model_arrays")
            if found is not None:
                self.shared[found[0]] = found[1]
        if fingerprint not in self.shared:
            raise ValueError(f"a reply names head model {fingerprint}, which no model actor has")
        return self.shared[fingerprint]

    def write(self, photo: Photo, decision, answer: dict, models: list) -> tuple:
        """``answer`` from a model actor (Ray resolves it first) -> the photo's files; ``models`` the actors left."""
        from ..wire import protocol
        from .blender import blender_chatter_to_stderr
        from .writer import handle_reply

        self.models = models
        if not self.context.info:  # recorded in every object's metadata, as the plain batch records its server's
            self.context.info = self._ask_models("info") or {}
        report = PhotoReport(photo=shown(photo.path), key=photo.key)
        if answer["error"] is not None:
            report.fail(*answer["error"])
        else:
            with blender_chatter_to_stderr(not self.context.opts.verbose):
                handle_reply(self.context, photo, protocol.decode(answer["frames"]), decision, report)
        return report, answer["node"], _node()


def connect(opts) -> None:
    """``local``: a Ray instance of this process's own, with a logical CPU per actor (they share the real cores);
    else join the cluster at the address (auto, HOST:PORT, ray://HOST:10001)."""
    import os

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # every error is handled here, per photo or actor
    if opts.ray == "local":
        cpus = max(os.cpu_count() or 1, opts.cpu_actors + opts.writer_actors)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=opts.ray, include_dashboard=False, log_to_driver=False)


def _actors(opts) -> tuple:
    """The model and writer actors, spread over the nodes; each restarts once if its node dies."""
    import ray

    common = {"max_restarts": 1, "scheduling_strategy": "SPREAD"}  # a lost photo is sent again by process()
    if opts.gpus_per_actor > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < opts.gpus_per_actor:  # an actor that can never be placed would wait out --server-timeout
            raise ValueError(f"--gpus-per-actor {opts.gpus_per_actor:g}: the cluster has {gpus:g} GPU(s) "
                             "(`ray status`); leave the option out to run the models on CPU")
        count = int(gpus // opts.gpus_per_actor)
        model = ray.remote(ModelActor).options(num_gpus=opts.gpus_per_actor, num_cpus=1, **common)
        models = [model.remote(opts.request, "cuda", 0) for _ in range(count)]
    else:
        model = ray.remote(ModelActor).options(num_cpus=1, **common)
        models = [model.remote(opts.request, "cpu", 1) for _ in range(opts.cpu_actors)]
    return models, ray.remote(WriterActor).options(num_cpus=1, **common)


def process(batch, say) -> int:
    """Every photo of ``batch.todo`` through the actors; ``batch.record`` as each one is written."""
    try:
        import ray
    except ImportError:
        say(f"error: --ray needs Ray in this Python ({sys.executable}): pip install 'ray>=2.40,<3' "
            "(or pip install 'faceforge[ray]')")
        batch.summary.run["error"] = "ray is not installed"
        return Exit.SETUP

    opts = batch.opts
    connect(opts)
    try:
        models, writer = _actors(opts)
    except ValueError as exc:
        batch.summary.run["error"] = str(exc)
        say(f"error: {exc}")
        return Exit.USAGE
    info = [model.info.remote() for model in models]
    writers = [writer.remote(opts) for _ in range(opts.writer_actors)]  # their Blenders start meanwhile
    say(f"ray: {len(ray.nodes())} node(s); starting {len(models)} model actor(s) "
        f"({f'{opts.gpus_per_actor:g} GPU each' if opts.gpus_per_actor > 0 else 'CPU'}) and {len(writers)} writer(s)")
    try:
        infos = ray.get(info, timeout=opts.server_timeout)
        ray.get([actor.__ray_ready__.remote() for actor in writers], timeout=opts.server_timeout)
    except ray.exceptions.GetTimeoutError:
        batch.summary.run["error"] = f"the actors did not start within {opts.server_timeout:g} s"
        say(f"error: the actors did not start within --server-timeout {opts.server_timeout:g} s; "
            "`ray status` shows whether the cluster has room for them")
        return Exit.SERVER
    except ray.exceptions.RayError as exc:  # an actor's constructor raised: its error's last line says why
        text = _cause(exc)
        batch.summary.run["error"] = text
        say(f"error: an actor could not start: {text}")
        return Exit.SERVER
    nodes = {"model": Counter(), "writer": Counter()}
    batch.summary.run.update(server="ray", server_info=infos[0], started_server=False, ray={
        "address": opts.ray, "nodes": len(ray.nodes()), "model_actors": len(models),
        "writer_actors": len(writers), "photos_by_node": nodes})
    say(f"ray: actors ready (models on {infos[0].get('device', '?')}); {len(batch.todo)} photo(s) to do")
    batch.progress.begin()
    pending, in_flight, losses, turn = list(batch.todo), {}, Counter(), 0
    while pending or in_flight:
        while pending and len(in_flight) < IN_FLIGHT_PER_MODEL * len(models):
            photo = pending.pop(0)
            model, writer_actor = models[turn % len(models)], writers[turn % len(writers)]
            turn += 1
            answer = model.reconstruct.remote(photo)
            in_flight[writer_actor.write.remote(photo, batch.decisions[photo.key], answer, models)] = (
                photo, model, writer_actor)
        done, _ = ray.wait(list(in_flight), num_returns=1, timeout=opts.timeout)
        ref = done[0] if done else next(iter(in_flight))  # nothing for --timeout s: the oldest is lost
        photo, model, writer_actor = in_flight.pop(ref)
        try:
            if not done:
                ray.cancel(ref, force=True)
                raise TimeoutError(f"no answer within {opts.timeout:g} s")
            report, model_node, writer_node = ray.get(ref)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            losses[photo.key] += 1
            _drop_dead(models, model, writers, writer_actor)
            if not models or not writers:
                batch.summary.run["error"] = "every model or writer actor is gone"
                say("error: every model or writer actor is gone (see `ray status`)")
                return Exit.SERVER
            if losses[photo.key] == 1:
                pending.insert(0, photo)
                continue
            report = batch.reports[photo.key].fail(ErrorCode.WORKER_LOST,
                                                   f"lost twice on Ray ({str(exc).splitlines()[0][:200]})")
        else:
            nodes["model"][model_node[:12]] += 1
            nodes["writer"][writer_node[:12]] += 1
            batch.reports[photo.key] = report
        batch.record(report, photo.name)
    return Exit.OK


def _cause(exc: Exception) -> str:
    """The last non-empty line of a Ray error, which holds the remote exception (e.g. ``RuntimeError: ...``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else exc.__class__.__name__)[:300]


def _drop_dead(models: list, model, writers: list, writer) -> None:
    """Keep the actors that still answer (a restarted one answers once it has loaded its models again)."""
    import ray

    for pool, actor in ((models, model), (writers, writer)):
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=PING_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            if actor in pool:
                pool.remove(actor)
