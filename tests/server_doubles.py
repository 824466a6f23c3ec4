"""A real InferenceServer (real sockets, real queue and worker) around a stand-in pipeline.

The scheduler's behaviour (time limits, vanished clients, internal errors) does not depend on what
the models compute, only on when the pipeline reaches its stage boundaries; a pipeline that sleeps
between them makes those tests take a second instead of a model load. Run as a script it serves
until killed (``python -m tests.server_doubles ADDRESS SECONDS_PER_STAGE [NAME=VALUE ...]``, ``main``): the
process a test kills or measures.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from types import SimpleNamespace
from typing import Callable

import numpy as np

from inference_server.config import ServerConfig
from inference_server.limits import MB, RequestLimits
from inference_server.server import InferenceServer

STAGES = ("load", "detect", "align", "landmarks", "depth", "mesh", "detail")


class StagedPipeline:
    """Sleeps ``seconds_per_stage`` before each stage report; raises ``failure`` at the mesh stage if given;
    takes ``load_seconds`` to build, as the models do; replies with one face of ``reply_bytes`` if given."""

    def __init__(self, seconds_per_stage: float, failure: Exception | None = None, load_seconds: float = 0.0,
                 reply_bytes: int = 0):
        time.sleep(load_seconds)
        self.seconds_per_stage = seconds_per_stage
        self.reply_bytes = reply_bytes
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
        faces = [SimpleNamespace(index=0, arrays={"blob": np.ones(self.reply_bytes, np.uint8)}, meta={"index": 0})]
        return SimpleNamespace(faces=faces if self.reply_bytes else [],
                               meta={"timings_ms": {"all": 1.0}, "image": bytes(image).decode()})


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


def main(argv: list) -> None:
    """``ADDRESS SECONDS_PER_STAGE [reply_mb=N] [max_unread_mb=N] [NAME=VALUE of ServerConfig's numbers]``."""
    address, seconds, *settings = argv
    settings = dict(setting.split("=", 1) for setting in settings)
    reply_mb, unread_mb = float(settings.pop("reply_mb", 0)), float(settings.pop("max_unread_mb", 128))
    config = ServerConfig(bind=address, max_unread_bytes=int(unread_mb * MB),
                          limits=RequestLimits(reply_bytes=int(min(unread_mb, 64) * MB)),
                          **{name: type(getattr(ServerConfig, name))(value) for name, value in settings.items()})
    print("serving", flush=True)
    InferenceServer(config, lambda: StagedPipeline(float(seconds), reply_bytes=int(reply_mb * MB))).serve_forever(
        on_ready=lambda *_: print("ready", flush=True))


if __name__ == "__main__":
    main(sys.argv[1:])
