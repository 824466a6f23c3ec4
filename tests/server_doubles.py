"""A real InferenceServer (real sockets, real queue and worker) around a stand-in pipeline.

The scheduler's behaviour (time limits, vanished clients, internal errors) does not depend on what
the models compute, only on when the pipeline reaches its stage boundaries; a pipeline that sleeps
between them makes those tests take a second instead of a model load. Run as a script it serves
until killed (``python -m tests.server_doubles ADDRESS SECONDS_PER_STAGE``): the process a test kills.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from types import SimpleNamespace
from typing import Callable

from inference_server.config import ServerConfig
from inference_server.server import InferenceServer

STAGES = ("load", "detect", "align", "landmarks", "depth", "mesh", "detail")


class StagedPipeline:
    """Sleeps ``seconds_per_stage`` before each stage report; raises ``failure`` at the mesh stage if given;
    takes ``load_seconds`` to build, as the models do."""

    def __init__(self, seconds_per_stage: float, failure: Exception | None = None, load_seconds: float = 0.0):
        time.sleep(load_seconds)
        self.seconds_per_stage = seconds_per_stage
        self.failure = failure
        self.started: list[bytes] = []  # image bytes of every request that began running

    def info(self) -> dict:
        return {"device": "cpu", "device_name": "CPU", "torch": "0.0-test", "models": ["staged stand-in"]}

    def head_model_arrays(self):
        return None  # face mode only

    def reconstruct(self, image, params=None, *, config=None, report=None):
        self.started.append(bytes(image))
        for number, stage in enumerate(STAGES):
            report(stage, stage, number / len(STAGES), 1 if number >= 2 else 0, 1 if number >= 2 else 0)
            if stage == "mesh" and self.failure is not None:
                raise self.failure
            time.sleep(self.seconds_per_stage)
        return SimpleNamespace(faces=[], meta={"timings_ms": {"all": 1.0}, "image": bytes(image).decode()})


@contextlib.contextmanager
def running(pipeline: StagedPipeline | Callable[[], StagedPipeline], config: ServerConfig):
    """Serve on a thread; yields the server once it is ready (its ``address`` resolved). Worker processes
    (``config.workers`` > 1) each build their own from a factory that pickles: ``partial(StagedPipeline, ...)``."""
    server = InferenceServer(config, pipeline if callable(pipeline) else lambda: pipeline)
    ready = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"on_ready": lambda *_: ready.set()}, daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "stand-in server did not start"
        yield server
    finally:
        server.stop()
        thread.join(10)


if __name__ == "__main__":
    address, seconds = sys.argv[1], float(sys.argv[2])
    print("serving", flush=True)
    InferenceServer(ServerConfig(bind=address), lambda: StagedPipeline(seconds)).serve_forever(
        on_ready=lambda *_: print("ready", flush=True))
