"""What the upstream-equivalence fixture is made of, shared by its generator and its test.

The fixture (``fixtures/depth_upstream.npz``) holds what the published code of MiDaS and Depth
Anything V2 computes for each supported architecture; ``make_depth_upstream_fixture.py`` made it
in a separate environment with that code. Neither the weights nor the inputs are stored: both
sides rebuild them from names and seeds with the functions below (numpy's legacy RandomState,
whose streams are frozen), so the file stays small and the weights are the same on both sides.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "depth_upstream.npz"
SEED = 2026
OUTPUT_STRIDE = 8   # the fixture keeps every 8th output pixel per axis, plus statistics of the whole map
PIXEL_STRIDE = (13, 11)
RESIZE_STRIDE = 5

# Network inputs per architecture: a square and a non-square one (rows, cols), each already a
# multiple of the network's patch/stride; one input per family is at the native size.
NETWORK_INPUTS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "midas_v21_small_256": ((256, 256), (256, 320)),
    "dpt_hybrid_384": ((384, 384), (384, 480)),
    "dpt_large_384": ((384, 384), (256, 320)),
    "dpt_beit_large_512": ((512, 512), (256, 352)),
    "depth_anything_v2_vits": ((518, 518), (364, 476)),
    "depth_anything_v2_vitb": ((518, 518), (364, 476)),
    "depth_anything_v2_vitl": ((266, 266), (266, 350)),
}
# Photos (rows, cols) put through each network's upstream input transform: larger and smaller than
# the native sizes, portrait, landscape and square.
PHOTO_SHAPES = ((300, 240), (200, 200), (700, 520), (90, 130), (384, 500))
# One architecture per input transform (mean/std and resize rule); sizes are checked for all seven.
PIXEL_ARCHITECTURES = ("midas_v21_small_256", "dpt_large_384", "depth_anything_v2_vits")
# Network-output grids resized to photo sizes by each upstream's output interpolation.
OUTPUT_RESIZES = (((37, 51), (90, 130)), ((24, 20), (300, 240)))


def _rng(*names: object) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32("/".join(map(str, (SEED, *names))).encode()))


def published_weights(state: dict[str, torch.Tensor], salt: int = 0) -> dict[str, torch.Tensor]:
    """Every floating tensor of a published-layout state dict replaced by values fixed by its name
    and ``salt`` (the generator picks, per network, the first salt whose output is not all zero: the
    depth heads end in a ReLU).

    Scales keep a random network's activations of order one through 24 blocks: matrices and
    kernels ~ N(0, 1/fan_in), norm scales and layer-scale gammas ~ 1 + N(0, 0.1^2), biases and
    the other vectors ~ N(0, 0.1^2), class/position tokens ~ N(0, 0.5^2), batch-norm variances
    positive. Integer buffers (BEiT's position index) stay as they are (zeros if laid out on ``meta``)."""
    filled = {}
    for key, value in state.items():
        if not value.is_floating_point():
            filled[key] = torch.zeros(value.shape, dtype=value.dtype) if value.is_meta else value
            continue
        shape = tuple(value.shape)
        noise = _rng(key, salt).standard_normal(shape if shape else ()).astype(np.float32)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            data = 1 + 0.1 * np.abs(noise)
        elif leaf in ("cls_token", "pos_embed"):
            data = 0.5 * noise
        elif len(shape) >= 2:
            data = noise / np.sqrt(np.prod(shape[1:]))
        elif leaf in ("weight", "gamma", "gamma_1", "gamma_2"):
            data = 1 + 0.1 * noise
        else:
            data = 0.1 * noise
        filled[key] = torch.from_numpy(np.asarray(data, np.float32).reshape(shape))
    return filled


def network_input(arch_id: str, shape: tuple[int, int]) -> torch.Tensor:
    """An already-normalised input (1, 3, rows, cols) ~ N(0, 1)."""
    noise = _rng(arch_id, *shape).standard_normal((1, 3, *shape)).astype(np.float32)
    return torch.from_numpy(noise)


def photo(shape: tuple[int, int]) -> np.ndarray:
    """A real photo (skimage's astronaut) resized to ``shape``: uint8 RGB."""
    from skimage import data
    return np.ascontiguousarray(cv2.resize(data.astronaut(), (shape[1], shape[0]), interpolation=cv2.INTER_AREA))


def network_output_grid(shape: tuple[int, int]) -> np.ndarray:
    return _rng("output", *shape).standard_normal(shape).astype(np.float32)


def summary(array: np.ndarray, stride: tuple[int, int] | int) -> np.ndarray:
    """What the fixture keeps of a map: a strided sample of its last two axes plus mean/std/min/max."""
    rows, cols = (stride, stride) if isinstance(stride, int) else stride
    array = np.asarray(array, np.float64)
    stats = [array.mean(), array.std(), array.min(), array.max()]
    return np.concatenate([array[..., ::rows, ::cols].ravel(), stats]).astype(np.float32)
