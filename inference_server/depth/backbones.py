"""Encoders: a timm backbone (never with downloaded weights) -> four feature maps at strides ~4..32.

Transformers give one token grid per block, so DPT taps four blocks and reassembles each grid to
its own stride; the hybrid ViT takes its two finest levels from its ResNet stem instead; CNNs
(EfficientNet-Lite3) give their stage outputs directly.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from .blocks import RESAMPLE_FACTORS, ProjectReadout, Reassemble


def create_backbone(name: str, **kwargs) -> nn.Module:
    """timm model with random weights: checkpoints supply the weights, nothing is fetched."""
    return timm.create_model(name, pretrained=False, **kwargs)


class TokenEncoder(nn.Module):
    """ViT-family backbone tapped after blocks ``taps``; each grid reassembled to its level.

    ``readout`` = DPT's projected class token (MiDaS) or none (Depth Anything, which ignores it);
    ``norm`` = apply the backbone's final norm to the tapped tokens (Depth Anything does, MiDaS
    does not). ``cnn_levels`` finest levels come from the hybrid's ResNet stages, as they are.
    """

    def __init__(self, backbone: nn.Module, taps: tuple[int, ...], channels: tuple[int, ...],
                 readout: bool, norm: bool, cnn_levels: int = 0):
        super().__init__()
        self.backbone = backbone
        self.taps = list(taps)
        self.norm = norm
        self.cnn_levels = cnn_levels
        dim = backbone.embed_dim
        token_levels = range(cnn_levels, 4)
        self.readout = nn.ModuleList(ProjectReadout(dim) if readout and i in token_levels else nn.Identity()
                                     for i in range(4))
        self.reassemble = nn.ModuleList(Reassemble(dim, channels[i], RESAMPLE_FACTORS[i]) if i in token_levels
                                        else nn.Identity() for i in range(4))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stage_outputs: list[torch.Tensor] = []
        stages = self.backbone.patch_embed.backbone.stages[:self.cnn_levels] if self.cnn_levels else []
        hooks = [stage.register_forward_hook(lambda _m, _i, out: stage_outputs.append(out)) for stage in stages]
        try:
            tapped = self.backbone.forward_intermediates(
                x, indices=self.taps, return_prefix_tokens=True, norm=self.norm, stop_early=True,
                output_fmt="NCHW", intermediates_only=True)
        finally:
            for hook in hooks:
                hook.remove()
        levels = list(stage_outputs)
        for level, (grid, prefix) in enumerate(tapped, start=self.cnn_levels):
            if isinstance(self.readout[level], ProjectReadout):
                b, c, h, w = grid.shape
                tokens = self.readout[level](grid.flatten(2).transpose(1, 2), prefix[:, :1])
                grid = tokens.transpose(1, 2).reshape(b, c, h, w)
            levels.append(self.reassemble[level](grid))
        return levels


class StageEncoder(nn.Module):
    """CNN backbone built ``features_only``: its selected stage outputs are the levels."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x))
