"""The DPT decoder shared by every supported network: reassemble, refine-and-fuse, depth head.

DPT (Ranftl et al., "Vision Transformers for Dense Prediction") turns four encoder feature maps
at strides 4, 8, 16, 32 into one dense map: each level is projected to a common width
(``adapt``), then a chain of fusion blocks walks from the coarsest level to the finest, each one
refining the running map with two residual conv units, adding the next level and upsampling.
MiDaS v2.1 small uses the same decoder with widths that double per level ("expand").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Refine the running map, add the (refined) skip level, resize, then mix channels 1x1."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels)
        self.unit = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Decoder(nn.Module):
    """Four feature maps (fine to coarse) -> one map at twice the finest level's resolution.

    ``widths`` are the fusion widths per level; with equal widths this is DPT's decoder, with
    doubling widths it is MiDaS small's "expand" variant (each block halves on its way out, except
    the finest, which keeps its width)."""

    def __init__(self, in_channels: tuple[int, ...], widths: tuple[int, ...]):
        super().__init__()
        self.adapt = nn.ModuleList(nn.Conv2d(c, w, 3, padding=1, bias=False) for c, w in zip(in_channels, widths))
        outs = (widths[0],) + tuple(widths[:-1])
        self.fusion = nn.ModuleList(FusionBlock(w, o) for w, o in zip(widths, outs))

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        adapted = [conv(level) for conv, level in zip(self.adapt, levels)]
        x = None
        for i in reversed(range(len(adapted))):
            finer = adapted[i - 1].shape[2:] if i > 0 else tuple(2 * s for s in adapted[0].shape[2:])
            x = self.fusion[i](adapted[i] if x is None else x, None if x is None else adapted[i], finer)
        return x


class DepthHead(nn.Module):
    """conv3x3 (halve) -> resize to the output size -> conv3x3 (hidden) -> relu -> conv1x1 -> relu.

    The output is non-negative relative inverse depth. ``align_corners`` is the one difference
    between the heads of the published networks (MiDaS small resizes without it)."""

    def __init__(self, channels: int, hidden: int = 32, align_corners: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(channels // 2, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, 1, 1)
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(self.conv1(x), size=size, mode="bilinear", align_corners=self.align_corners)
        return F.relu(self.conv3(F.relu(self.conv2(x))))


class ProjectReadout(nn.Module):
    """DPT's "project" readout: each patch token is concatenated with the class token and projected
    back to the token width, so the global token informs every location."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, tokens: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(torch.cat([tokens, cls_token.expand_as(tokens)], -1)))


class Reassemble(nn.Module):
    """Token grid (B, C, h, w) -> 1x1 projection -> resample to the level's stride.

    ``factor`` 4 and 2 upsample with a transposed conv, 1 keeps the grid, 0.5 halves it with a
    strided 3x3 conv: tokens at stride 16 (or 14) become levels at strides 4, 8, 16, 32."""

    def __init__(self, dim: int, channels: int, factor: float):
        super().__init__()
        self.project = nn.Conv2d(dim, channels, 1)
        if factor > 1:
            self.resample = nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor))
        elif factor == 1:
            self.resample = nn.Identity()
        else:
            self.resample = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.resample(self.project(grid))


RESAMPLE_FACTORS = (4, 2, 1, 0.5)
