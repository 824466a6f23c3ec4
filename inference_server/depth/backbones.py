"""Encoders: a timm backbone (never with downloaded weights) -> four feature maps at strides ~4..32.

Transformers give one token grid per block, so DPT taps four blocks and reassembles each grid to
its own stride; the hybrid ViT takes its two finest levels from its ResNet stem instead; CNNs
(EfficientNet-Lite3) give their stage outputs directly.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import RESAMPLE_FACTORS, ProjectReadout, Reassemble
from .positions import RELATIVE, absolute_table, relative_bias


def create_backbone(name: str, **kwargs) -> nn.Module:
    """timm model with random weights: checkpoints supply the weights, nothing is fetched."""
    return timm.create_model(name, pretrained=False, **kwargs)


class TokenEncoder(nn.Module):
    """ViT-family backbone tapped after blocks ``taps``; each grid reassembled to its level.

    The backbone's own forward is not used: the tokens are embedded and run through its blocks
    here so that positions are resampled by the upstream rule (``positions``) for any input size.
    ``readout`` = DPT's projected class token (MiDaS) or none (Depth Anything, which ignores it);
    ``norm`` = apply the backbone's final norm to the tapped tokens (Depth Anything does, MiDaS
    does not). ``cnn_levels`` finest levels come from the hybrid's ResNet stages, as they are.
    """

    def __init__(self, backbone: nn.Module, taps: tuple[int, ...], channels: tuple[int, ...],
                 readout: bool, norm: bool, positions: str, cnn_levels: int = 0):
        super().__init__()
        self.backbone = backbone
        self.taps = list(taps)
        self.norm = norm
        self.positions = positions
        self.cnn_levels = cnn_levels
        dim = backbone.embed_dim
        token_levels = range(cnn_levels, 4)
        self.readout = nn.ModuleList(ProjectReadout(dim) if readout and i in token_levels else nn.Identity()
                                     for i in range(4))
        self.reassemble = nn.ModuleList(Reassemble(dim, channels[i], RESAMPLE_FACTORS[i]) if i in token_levels
                                        else nn.Identity() for i in range(4))

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image -> (class token + patch tokens with positions added, token grid (rows, cols))."""
        patch_embed = self.backbone.patch_embed
        features = patch_embed.backbone(x) if hasattr(patch_embed, "backbone") else x  # the hybrid's ResNet
        if isinstance(features, (list, tuple)):
            features = features[-1]
        grid = patch_embed.proj(features)
        size = (grid.shape[2], grid.shape[3])
        tokens = grid.flatten(2).transpose(1, 2)  # (these networks have no patch norm)
        tokens = torch.cat([self.backbone.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if self.positions != RELATIVE:
            square = x.shape[2] == x.shape[3]
            tokens = tokens + absolute_table(self.backbone.pos_embed, size, self.positions, square)
        return tokens, size

    def _blocks(self, tokens: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        tapped = []
        for index, block in enumerate(self.backbone.blocks[:max(self.taps) + 1]):
            if self.positions == RELATIVE:
                bias = relative_bias(block.attn.relative_position_bias_table, block.attn.window_size, size)
                tokens = beit_block(block, tokens, bias)
            else:
                tokens = block(tokens)
            if index in self.taps:
                tapped.append(self.backbone.norm(tokens) if self.norm else tokens)
        return tapped

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stage_outputs: list[torch.Tensor] = []
        stages = self.backbone.patch_embed.backbone.stages[:self.cnn_levels] if self.cnn_levels else []
        hooks = [stage.register_forward_hook(lambda _m, _i, out: stage_outputs.append(out)) for stage in stages]
        try:
            tokens, (rows, cols) = self._embed(x)
        finally:
            for hook in hooks:
                hook.remove()
        levels = list(stage_outputs)
        for level, tapped in enumerate(self._blocks(tokens, (rows, cols)), start=self.cnn_levels):
            patches = tapped[:, 1:]
            if isinstance(self.readout[level], ProjectReadout):
                patches = self.readout[level](patches, tapped[:, :1])
            grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, rows, cols)
            levels.append(self.reassemble[level](grid))
        return levels


def beit_block(block: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One timm BEiT block with ``bias`` as its attention's relative-position bias (any window)."""
    attn = block.attn
    h = block.norm1(x)
    qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)) if attn.q_bias is not None else attn.qkv.bias
    batch, count, _ = h.shape
    q, k, v = F.linear(h, attn.qkv.weight, qkv_bias).reshape(batch, count, 3, attn.num_heads, -1).permute(
        2, 0, 3, 1, 4).unbind(0)
    h = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    h = attn.proj(h.transpose(1, 2).reshape(batch, count, -1))
    x = x + (h if block.gamma_1 is None else block.gamma_1 * h)
    h = block.mlp(block.norm2(x))
    return x + (h if block.gamma_2 is None else block.gamma_2 * h)


class StageEncoder(nn.Module):
    """CNN backbone built ``features_only``: its selected stage outputs are the levels."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x))
