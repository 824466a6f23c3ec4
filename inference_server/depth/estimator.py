"""Learned depth on the aligned face crop: preprocessing per network, inference, fusion with the prior."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import load_network
from .fuse import Alignment, FuseConfig, fuse_depth
from .networks import Architecture, DepthNet
from .store import find_checkpoint


@dataclass(frozen=True)
class DepthConfig:
    checkpoint: str                 # a checkpoint file, or the name of an installed one
    architecture: str = "auto"      # "auto" = detected from the file's keys and shapes
    input_size: int = 0             # network input side in pixels; 0 = the network's native size
    fuse_weight: float = 1.0        # share of the network in the fused depth's detail (0..1)
    device: str = "cpu"             # "cpu", "cuda", "cuda:1"; CUDA runs in half precision
    camera_distance: float = 1.0    # metres, for the inverse-depth alignment (math.inf = weak perspective)
    threads: int = 0                # CPU threads while the network runs (0 = torch's current setting)


def network_input_size(arch: Architecture, height: int, width: int, requested: int = 0) -> tuple[int, int]:
    """(H, W) for the network, chosen as upstream's ``Resize`` transform chooses it for this network.

    The target side is ``requested`` or the native size; the aspect ratio is kept and the scale
    picked by the network's rule (``lower_bound``: both sides at least the target, Depth Anything;
    ``upper_bound``: both at most, MiDaS small; ``minimal``: the scale nearest 1 of the two that fit
    one side, DPT); each side is then rounded to the network's multiple (14 for DINOv2 patches, 32
    for the 5-level decoders), up or down where rounding would break the bound."""
    side = requested or arch.native_size
    m, rule = arch.multiple, arch.resize_rule
    by_height, by_width = side / height, side / width
    if rule == "lower_bound":
        scale = max(by_height, by_width)
    elif rule == "upper_bound":
        scale = min(by_height, by_width)
    else:
        scale = by_width if abs(1 - by_width) < abs(1 - by_height) else by_height

    def snap(length: float) -> int:
        rounded = round(length / m) * m
        if rule == "upper_bound" and rounded > side:
            rounded = math.floor(length / m) * m
        if rule == "lower_bound" and rounded < side:
            rounded = math.ceil(length / m) * m
        return max(m, int(rounded))

    return snap(height * scale), snap(width * scale)


def preprocess(rgb: np.ndarray, arch: Architecture, size: tuple[int, int]) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> normalised float tensor (1, 3, h, w), as upstream prepares it: scaled to
    [0, 1] in float64 first, then resized bicubically, normalised, and only then made float32."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    resized = cv2.resize(rgb / 255.0, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    normalised = ((resized - np.asarray(arch.mean)) / np.asarray(arch.std)).astype(np.float32)
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy()).unsqueeze(0)


def to_image_size(prediction: torch.Tensor, arch: Architecture, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) network output -> (B, H, W) on the image grid, interpolated as upstream does."""
    mode, align_corners = arch.output_resize
    return F.interpolate(prediction[:, None], size=size, mode=mode, align_corners=align_corners)[:, 0]


@contextmanager
def cpu_threads(count: int):
    """torch's CPU thread count set to ``count`` for the block (0: unchanged). The server's other models
    keep their own setting; the network's default of 2 is what the CPU figures in README.md assume."""
    before = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count > 0:
            torch.set_num_threads(before)


class DepthEstimator:
    """One network on one device; ``predict`` and ``fused_depth`` are called from one thread at a time."""

    def __init__(self, config: DepthConfig, network: DepthNet | None = None):
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the depth network was asked to run on CUDA but torch sees no CUDA GPU")
        if network is None:
            network = load_network(find_checkpoint(config.checkpoint), config.architecture, self.device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.network = network.to(self.device, self.dtype).eval()
        self.arch = network.arch
        self.fuse = FuseConfig(weight=config.fuse_weight, camera_distance=config.camera_distance)
        if config.input_size < 0:
            raise ValueError(f"input_size must be 0 (native) or a side in pixels, not {config.input_size}")

    def predict(self, crop_rgb: np.ndarray) -> np.ndarray:
        """Relative inverse depth (H, W) float32 on the crop's own grid (larger = nearer)."""
        h, w = crop_rgb.shape[:2]
        size = network_input_size(self.arch, h, w, self.config.input_size)
        image = preprocess(crop_rgb, self.arch, size).to(self.device, self.dtype)
        with torch.inference_mode(), cpu_threads(self.config.threads if self.device.type == "cpu" else 0):
            out = to_image_size(self.network(image).float(), self.arch, (h, w))
        result = out[0].cpu().numpy()
        if not np.isfinite(result).all():
            raise FloatingPointError(f"{self.arch.id} produced non-finite depth (half-precision overflow?)")
        return result

    def fused_depth(self, crop_rgb: np.ndarray, prior_depth: np.ndarray, mask: np.ndarray,
                    weight: float | None = None) -> tuple[np.ndarray, Alignment]:
        """(fused metric heights on the prior's grid, alignment) - see ``fuse.fuse_depth``.

        ``prior_depth`` and ``mask`` cover the same area as the crop, at any resolution; ``weight``
        overrides the configured fuse weight for this call (a per-request option)."""
        inverse = self.predict(crop_rgb)
        rows, cols = prior_depth.shape
        on_prior_grid = cv2.resize(inverse, (cols, rows), interpolation=cv2.INTER_AREA)
        fuse = self.fuse if weight is None else replace(self.fuse, weight=weight)
        return fuse_depth(on_prior_grid, prior_depth, mask, fuse)

    def info(self) -> dict:
        side = self.config.input_size or self.arch.native_size
        return {"architecture": self.arch.id, "title": self.arch.title, "licence": self.arch.licence,
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "input_size": list(network_input_size(self.arch, side, side, side)),
                "fuse_weight": self.config.fuse_weight,
                "camera_distance": None if math.isinf(self.config.camera_distance) else self.config.camera_distance}
