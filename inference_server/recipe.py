"""How each server worker builds its models, made by the I/O process without importing torch.

With ``serve --workers N`` the I/O process only validates, queues and routes messages; importing
torch and the pipeline's libraries there would cost about 0.8 GB of memory that nothing uses. So
everything that needs torch -- resolving the device, finding the depth checkpoint, splitting the
torch threads -- happens in the worker, and an operator's mistake found there ends the server
with the exit status it always had.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from addon.wire.errors import Exit, ProtocolError

from .config import ReconstructionConfig
from .workers import WorkerFailed


@dataclass(frozen=True)
class PipelineRecipe:
    """Picklable (a closure is not): each worker process of ``serve --workers N`` calls its own copy."""

    device: str                    # "auto", "cpu", "cuda", "cuda:1"...: resolved by each worker
    defaults: ReconstructionConfig
    head_model: Path | None        # an installed ICT-FaceKit file; None: face mode only
    depth_model: str = ""          # ``--depth-model``: a checkpoint path or installed name, loaded at start
    threads: int = 0               # ``--threads``: torch CPU threads in all (0: torch's default)
    workers: int = 1               # the workers that share ``threads``

    def __call__(self):
        import torch

        from .depth import CheckpointError, find_checkpoint
        from .depth.backend import DepthSettings
        from .pipeline import FacePipeline, UnusableHeadModel, resolve_device

        try:
            device = resolve_device(self.device)
        except (RuntimeError, ValueError) as exc:  # a device torch cannot use
            raise WorkerFailed(str(exc), Exit.USAGE) from None
        try:
            depth_model = str(find_checkpoint(self.depth_model)) if self.depth_model else ""
        except CheckpointError as exc:
            raise WorkerFailed(f"--depth-model: {exc}", Exit.SETUP) from None
        threads = self.threads
        if self.workers > 1:
            threads = max(1, (threads or torch.get_num_threads()) // self.workers)
        if threads:
            torch.set_num_threads(threads)
        depth = DepthSettings(model=depth_model, threads=threads or DepthSettings.threads)
        try:
            return FacePipeline(device, self.defaults, self.head_model, depth)
        except UnusableHeadModel as exc:
            raise WorkerFailed(exc.message, Exit.SETUP) from None
        except ProtocolError as exc:  # only the operator's checkpoint loads at start: it exists but is unusable
            if not depth_model:
                raise
            raise WorkerFailed(f"--depth-model: {exc.message}", Exit.BAD_INPUT) from None
