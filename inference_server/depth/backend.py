"""The depth-network backend of one pipeline: which checkpoint a request gets, loading it, running it.

A request may only name installed checkpoints (``depth_model``); the server operator's own model
(``serve --depth-model``) may be any file. One network is kept loaded at a time (a ViT-L is a GB of
memory and seconds to load): the first request that needs it loads it, or the server at start when
the operator named one; a request naming another replaces it. ``depth_backend`` cues uses the
project's own cues network instead (``cues.face_depth``; shipped, nothing to install), loaded by the
first request that asks. Owned by the pipeline's worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from addon.wire.errors import ErrorCode, ProtocolError

from .checkpoints import CheckpointError
from .estimator import DepthConfig, DepthEstimator
from .face_fusion import FaceFusion, alignment_meta, fuse_into_face
from .store import depth_dir, find_checkpoint, find_installed, installed

INSTALL_HINT = "install one with `python -m inference_server model install CHECKPOINT`"


@dataclass(frozen=True)
class DepthSettings:
    """Server-wide depth settings (a request's are in ``ReconstructionConfig``)."""

    model: str = ""      # the operator's checkpoint, a path or an installed name ("" = none): loaded at start
    threads: int = 2     # CPU threads while the network runs (0 = torch's setting)


class DepthNetworks:
    def __init__(self, device: torch.device, settings: DepthSettings = DepthSettings()):
        self.device = device
        self.settings = settings
        self.server_model = find_checkpoint(settings.model) if settings.model else None
        self._loaded: tuple[Path, DepthEstimator] | None = None
        self._cues = None   # (path, network) for depth_backend cues, loaded by the first request that asks
        if self.server_model is not None:
            self.estimator(self.server_model)

    def checkpoint(self, config) -> Path | None:
        """The checkpoint ``config`` selects (None for the landmark backend), or ProtocolError(no_model)."""
        if config.depth_backend != "network":
            return None
        if config.depth_model:
            try:
                return find_installed(config.depth_model)
            except CheckpointError as exc:
                raise ProtocolError(ErrorCode.NO_MODEL, str(exc)) from None
        if self.server_model is not None:
            return self.server_model
        names = ", ".join(installed()) or "none"
        raise ProtocolError(ErrorCode.NO_MODEL, "depth_backend 'network' needs a depth checkpoint: name one with "
                                                f"depth_model (installed in {depth_dir()}: {names}), or {INSTALL_HINT}")

    def estimator(self, path: Path) -> DepthEstimator:
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = None  # the old network goes before the next one loads
            config = DepthConfig(checkpoint=str(path), device=str(self.device), threads=self.settings.threads)
            try:
                self._loaded = path, DepthEstimator(config)
            except CheckpointError as exc:
                raise ProtocolError(ErrorCode.NO_MODEL, f"the depth checkpoint {path} cannot be loaded ({exc}); "
                                                        f"reinstall it: {INSTALL_HINT}") from None
        return self._loaded[1]

    def share_cues(self, path: Path, network) -> None:
        """Use the cues network head mode already loaded (from ``path``) for ``depth_backend`` cues too."""
        self._cues = path, network

    def cues_network(self):
        """The cues network (installed, else shipped weights) for ``depth_backend`` cues, loaded once
        (unless head mode shared its own)."""
        from ..cues import checkpoint

        if self._cues is None:
            path = checkpoint.find()
            try:
                self._cues = path, checkpoint.load(path, self.device)
            except checkpoint.CheckpointError as exc:
                raise ProtocolError(ErrorCode.NO_MODEL, f"depth_backend 'cues' needs the cues network: {exc}; "
                                                        "reinstall FaceForge or `model install` a cues checkpoint") from None
        return self._cues

    def fuse(self, crop: np.ndarray, points: np.ndarray, geometry, config) -> tuple[dict, np.ndarray | None]:
        """Run the selected network on the crop (``points``: its landmarks, crop pixels) and fuse it
        into ``geometry`` (in place).

        Returns the face meta's depth entries and the network's detail map (None: keep the photo's)."""
        split = max(config.detail_sigma, geometry.pixel_width / config.resolution)
        if config.depth_backend == "cues":
            from ..cues.face_depth import FUSE, nearness_on_crop

            path, network = self.cues_network()
            fuse = replace(FUSE, weight=config.depth_fuse_weight)
            nearness, confidence = nearness_on_crop(network, crop, points, self.device)
            fusion = fuse_into_face(geometry, nearness, fuse, split, with_detail=False,   # 64-px maps: the
                                    confidence=confidence)                              # photo's detail is finer
            meta = {"name": path.stem, "architecture": "faceforge-cues", "licence": "FaceForge's own (trained on ICT-FaceKit renders)",
                    "device": str(self.device), "fuse_weight": config.depth_fuse_weight,
                    "alignment": alignment_meta(fusion.alignment), "used": fusion.used}
            return {"depth_backend": "cues" if fusion.used else "landmarks", "depth_network": meta}, None
        path = self.checkpoint(config)
        estimator = self.estimator(path)
        fuse = replace(estimator.fuse, weight=config.depth_fuse_weight)
        fusion: FaceFusion = fuse_into_face(geometry, estimator.predict(crop), fuse, split)
        network = {"name": path.stem, "architecture": estimator.arch.id, "licence": estimator.arch.licence,
                   "device": str(estimator.device), "fuse_weight": config.depth_fuse_weight,
                   "alignment": alignment_meta(fusion.alignment), "used": fusion.used}
        return {"depth_backend": "network" if fusion.used else "landmarks", "depth_network": network}, fusion.detail

    def info(self) -> dict:
        names = installed()
        from ..cues import checkpoint

        return {"depth_backends": ["landmarks"] + (["cues"] if checkpoint.find().is_file() else [])
                + (["network"] if names or self.server_model else []),
                "depth_networks": names, "depth_model": str(self.server_model or ""),
                "depth_loaded": self._loaded[1].arch.id if self._loaded else None}
