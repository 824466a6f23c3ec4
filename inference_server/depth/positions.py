"""Position tables resampled for an input grid other than the training one, the way each upstream does it.

A published checkpoint's position embedding was trained for one token grid (24x24 for the MiDaS
ViTs at 384 px, 37x37 for DINOv2 at 518 px, a 32x32 window for BEiT at 512 px). Any other input
size needs the table resampled, and the result depends on how: the networks were fine-tuned
with their own code's rule, so reproducing their outputs means using exactly that rule (timm's
generic resampling, bicubic with antialiasing to the target size, differs by up to 0.2 in
Depth Anything's output). The rules, read off isl-org/MiDaS and DepthAnything/Depth-Anything-V2:

- ``BILINEAR`` (MiDaS ViT-L / hybrid): the grid part resized bilinearly to the target grid.
- ``DINOV2`` (Depth Anything V2): bicubic by a scale factor of (target + 0.1) / trained grid, no
  antialiasing, in float32; the table is used as it is when the input is square and its grid
  has the trained token count.
- ``RELATIVE`` (MiDaS BEiT): no absolute table; each block's relative-position bias table is
  resized bilinearly from the (2w-1) x (2w-1) offsets of the trained window to the new window's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.beit import gen_relative_position_index

BILINEAR, DINOV2, RELATIVE = "bilinear", "dinov2", "relative"
DINOV2_OFFSET = 0.1  # DINOv2's guard against the scale factor rounding one token short


def absolute_table(table: torch.Tensor, grid: tuple[int, int], rule: str, square_input: bool) -> torch.Tensor:
    """(1, 1 + n, C) class + grid embedding, trained on a square grid -> (1, 1 + gh*gw, C) for ``grid``."""
    prefix, patches = table[:, :1], table[:, 1:]
    side = math.isqrt(patches.shape[1])
    dim = table.shape[-1]
    square = patches.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule == BILINEAR:
        resized = F.interpolate(square, size=grid, mode="bilinear", align_corners=False)
    elif rule == DINOV2:
        if square_input and grid[0] * grid[1] == side * side:
            return table
        factors = ((grid[0] + DINOV2_OFFSET) / side, (grid[1] + DINOV2_OFFSET) / side)
        resized = F.interpolate(square.float(), scale_factor=factors, mode="bicubic", antialias=False)
        if tuple(resized.shape[-2:]) != grid:
            raise ValueError(f"position table resampled to {tuple(resized.shape[-2:])}, not {grid}")
        resized = resized.to(table.dtype)
    else:
        raise ValueError(f"no absolute position rule {rule!r}")
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)], dim=1)


def relative_bias(table: torch.Tensor, trained: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """BEiT attention bias (1, heads, 1 + n, 1 + n) for ``window`` from a table trained for ``trained``.

    The table holds one row per 2D offset ((2h-1) * (2w-1) of them) followed by three rows for the
    class token (to, from, itself); only the offset rows are resized."""
    offsets = (2 * trained[0] - 1) * (2 * trained[1] - 1)
    rows, cols = 2 * window[0] - 1, 2 * window[1] - 1
    grid = table[:offsets].reshape(1, 2 * trained[1] - 1, 2 * trained[0] - 1, -1).permute(0, 3, 1, 2)
    if (rows, cols) != tuple(grid.shape[-2:]):
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
    resized = torch.cat([grid.permute(0, 2, 3, 1).reshape(rows * cols, -1), table[offsets:]])
    index = gen_relative_position_index(window, device=table.device)
    area = window[0] * window[1] + 1
    return resized[index.view(-1)].view(area, area, -1).permute(2, 0, 1).unsqueeze(0)
