"""Learned depth (DPT / MiDaS, Depth Anything V2) on timm backbones, from local checkpoint files.

Public surface: ``DepthConfig`` + ``DepthEstimator`` (predict, fused_depth), ``load_network``,
``install_checkpoint`` / ``find_checkpoint``, ``fuse_depth``. See README.md in this folder.
"""
from .checkpoints import (CheckpointError, detect_architecture, load_network, network_from_state_dict,
                          read_state_dict, to_upstream)
from .estimator import DepthConfig, DepthEstimator
from .fuse import Alignment, FuseConfig, fuse_depth
from .networks import ARCHITECTURES, Architecture, DepthNet, build_network, get_architecture
from .store import find_checkpoint, find_installed, install_checkpoint, installed

__all__ = ["ARCHITECTURES", "Alignment", "Architecture", "CheckpointError", "DepthConfig", "DepthEstimator",
           "DepthNet", "FuseConfig", "build_network", "detect_architecture", "find_checkpoint", "find_installed",
           "fuse_depth", "get_architecture", "install_checkpoint", "installed", "load_network",
           "network_from_state_dict",
           "read_state_dict", "to_upstream"]
