"""The cues network: a timm encoder (trained from scratch: no pretrained weights offline), a U-Net
decoder with skip connections to half the input resolution, and two heads on it:

- dense, per output pixel: nearness (shift-free depth, crop pixels / ``NEARNESS_UNIT``), where the
  pixel lies on the mean head (``synth.COORD_SCALE`` units), a log-scale (Laplace) for each of the
  two — the confidence the fit weights them by — and a head-mask logit;
- global: the identity coefficients, from the pooled deepest features.

Variants by name (``CONFIGS``), one config each: a CPU-size one that ships, a GPU-size one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .crop import INPUT_SIDE, OUTPUT_STRIDE

NEARNESS_UNIT = 10.0     # crop pixels per network unit of nearness
DENSE_CHANNELS = 7       # nearness, coords (3), log-scale nearness, log-scale coords, mask logit
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.25)   # input normalisation (uint8 / 255)


@dataclass(frozen=True)
class CuesConfig:
    encoder: str = "resnet10t"               # a timm model name with features_only support
    decoder_channels: tuple = (96, 64, 48, 32)   # from stride 16 up to stride 2
    decoder_depth: int = 1                   # 3x3 conv layers per decoder stage
    identity_count: int = 100
    input_side: int = INPUT_SIDE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CuesConfig":
        values = dict(values)
        values["decoder_channels"] = tuple(values["decoder_channels"])
        return cls(**values)


CONFIGS = {
    "cues-cpu": CuesConfig(),
    "cues-gpu": CuesConfig(encoder="resnet50d", decoder_channels=(256, 128, 96, 64), decoder_depth=2),
}


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class CuesNet(nn.Module):
    def __init__(self, config: CuesConfig):
        super().__init__()
        import timm

        self.config = config
        self.encoder = timm.create_model(config.encoder, pretrained=False, features_only=True,
                                         out_indices=(0, 1, 2, 3, 4))
        skips = self.encoder.feature_info.channels()      # strides 2, 4, 8, 16, 32
        strides = self.encoder.feature_info.reduction()
        assert strides[0] == OUTPUT_STRIDE and strides[-1] == 32, strides
        self.up = nn.ModuleList()
        channels = skips[-1]
        for skip, out in zip(reversed(skips[:-1]), config.decoder_channels):
            layers = [_conv(channels + skip, out)] + [_conv(out, out) for _ in range(config.decoder_depth - 1)]
            self.up.append(nn.Sequential(*layers))
            channels = out
        self.dense = nn.Conv2d(channels, DENSE_CHANNELS, 3, padding=1)
        self.identity = nn.Sequential(nn.Linear(skips[-1], 256), nn.ReLU(inplace=True),
                                      nn.Linear(256, config.identity_count))
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """uint8 or [0, 1] float (N, 3, S, S) -> the encoder's feature maps at strides 2 ... 32."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return self.encoder((x - self.mean) / self.std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 or [0, 1] float (N, 3, S, S) -> dense (N, 7, S/2, S/2), identity (N, 100)."""
        features = self.encode(images)
        x = features[-1]
        identity = self.identity(x.mean((2, 3)))
        for block, skip in zip(self.up, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.dense(x), identity


def mirror_maps(maps: torch.Tensor, x_channel: int) -> torch.Tensor:
    """The (..., C, H, W) maps of a mirror image, mirrored back (or the reverse): the width flipped and
    the correspondence's x (channel ``x_channel``) negated, as the model's symmetry plane is x = 0."""
    mirrored = maps.flip(-1)
    mirrored[..., x_channel, :, :] *= -1
    return mirrored


def build(config: CuesConfig | str) -> CuesNet:
    return CuesNet(CONFIGS[config] if isinstance(config, str) else config)
