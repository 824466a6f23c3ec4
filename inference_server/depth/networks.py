"""The supported depth networks: what each one is built from, and how its input is prepared.

Every network is encoder (timm backbone) -> DPT decoder -> depth head, and predicts relative
inverse depth (larger = nearer, unknown scale and shift), as MiDaS and Depth Anything are trained
to. ``ARCHITECTURES`` is the one list of them; ``build_network`` constructs one with random
weights (a checkpoint fills them, see ``checkpoints``), on any device including ``meta``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .backbones import StageEncoder, TokenEncoder, create_backbone
from .blocks import Decoder, DepthHead
from .positions import BILINEAR, DINOV2, RELATIVE

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

MIDAS_DPT, MIDAS_HYBRID, MIDAS_SMALL = "midas_dpt", "midas_hybrid", "midas_small"
DEPTH_ANYTHING_V2 = "depth_anything_v2"


@dataclass(frozen=True)
class Architecture:
    id: str                      # the upstream model name, also the default checkpoint file stem
    title: str
    family: str                  # decides encoder wiring, head and checkpoint key layout
    backbone: str                # timm model name
    taps: tuple[int, ...]        # transformer blocks tapped for the token levels
    channels: tuple[int, ...]    # encoder level widths (fine to coarse)
    widths: tuple[int, ...]      # decoder widths per level
    native_size: int             # the training resolution (input side, pixels)
    multiple: int                # input sides are rounded to a multiple of this
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    positions: str = ""          # how token positions follow the input size (``positions``; "" = CNN)
    backbone_kwargs: dict = field(default_factory=dict)
    licence: str = "MIT"
    source: str = ""

    @property
    def cnn_levels(self) -> int:
        return 2 if self.family == MIDAS_HYBRID else 0

    @property
    def resize_rule(self) -> str:
        """Upstream's input resize (their ``Resize`` transform's method, aspect ratio kept)."""
        return {MIDAS_SMALL: "upper_bound", DEPTH_ANYTHING_V2: "lower_bound"}.get(self.family, "minimal")

    @property
    def output_resize(self) -> tuple[str, bool]:
        """(mode, align_corners) with which upstream resizes the prediction to the image."""
        return ("bilinear", True) if self.family == DEPTH_ANYTHING_V2 else ("bicubic", False)


_MIDAS_URL = "https://github.com/isl-org/MiDaS/releases"
_DA2_URL = "https://huggingface.co/depth-anything"
_TOKEN_KW = {"num_classes": 0}

ARCHITECTURES: dict[str, Architecture] = {a.id: a for a in (
    Architecture("dpt_large_384", "MiDaS v3.0 DPT-Large (ViT-L/16, 384)", MIDAS_DPT, "vit_large_patch16_384",
                 (5, 11, 17, 23), (256, 512, 1024, 1024), (256,) * 4, 384, 32, HALF_MEAN, HALF_STD,
                 positions=BILINEAR, backbone_kwargs=_TOKEN_KW, source=_MIDAS_URL),
    Architecture("dpt_hybrid_384", "MiDaS v3.0 DPT-Hybrid (ViT-B/16 + ResNet-50, 384)", MIDAS_HYBRID,
                 "vit_base_r50_s16_384", (8, 11), (256, 512, 768, 768), (256,) * 4, 384, 32, HALF_MEAN, HALF_STD,
                 positions=BILINEAR, backbone_kwargs=_TOKEN_KW, source=_MIDAS_URL),
    Architecture("dpt_beit_large_512", "MiDaS v3.1 BEiT-L/16 512", MIDAS_DPT, "beit_large_patch16_512",
                 (5, 11, 17, 23), (256, 512, 1024, 1024), (256,) * 4, 512, 32, HALF_MEAN, HALF_STD,
                 positions=RELATIVE, backbone_kwargs=_TOKEN_KW, source=_MIDAS_URL),
    Architecture("midas_v21_small_256", "MiDaS v2.1 small (EfficientNet-Lite3, 256)", MIDAS_SMALL,
                 "tf_efficientnet_lite3", (), (32, 48, 136, 384), (64, 128, 256, 512), 256, 32,
                 IMAGENET_MEAN, IMAGENET_STD, backbone_kwargs={"features_only": True, "out_indices": (1, 2, 3, 4)},
                 source=_MIDAS_URL),
    Architecture("depth_anything_v2_vits", "Depth Anything V2 Small (DINOv2 ViT-S/14)", DEPTH_ANYTHING_V2,
                 "vit_small_patch14_dinov2", (2, 5, 8, 11), (48, 96, 192, 384), (64,) * 4, 518, 14,
                 IMAGENET_MEAN, IMAGENET_STD, positions=DINOV2, backbone_kwargs=_TOKEN_KW, licence="Apache-2.0",
                 source=f"{_DA2_URL}/Depth-Anything-V2-Small"),
    Architecture("depth_anything_v2_vitb", "Depth Anything V2 Base (DINOv2 ViT-B/14)", DEPTH_ANYTHING_V2,
                 "vit_base_patch14_dinov2", (2, 5, 8, 11), (96, 192, 384, 768), (128,) * 4, 518, 14,
                 IMAGENET_MEAN, IMAGENET_STD, positions=DINOV2, backbone_kwargs=_TOKEN_KW, licence="CC-BY-NC-4.0 (non-commercial)",
                 source=f"{_DA2_URL}/Depth-Anything-V2-Base"),
    Architecture("depth_anything_v2_vitl", "Depth Anything V2 Large (DINOv2 ViT-L/14)", DEPTH_ANYTHING_V2,
                 "vit_large_patch14_dinov2", (4, 11, 17, 23), (256, 512, 1024, 1024), (256,) * 4, 518, 14,
                 IMAGENET_MEAN, IMAGENET_STD, positions=DINOV2, backbone_kwargs=_TOKEN_KW, licence="CC-BY-NC-4.0 (non-commercial)",
                 source=f"{_DA2_URL}/Depth-Anything-V2-Large"),
)}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown depth architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


class DepthNet(nn.Module):
    """image (B, 3, H, W), normalised -> relative inverse depth (B, H, W), non-negative."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        backbone = create_backbone(arch.backbone, **arch.backbone_kwargs)
        if arch.family == MIDAS_SMALL:
            self.encoder: nn.Module = StageEncoder(backbone)
        else:
            is_midas = arch.family != DEPTH_ANYTHING_V2
            self.encoder = TokenEncoder(backbone, arch.taps, arch.channels, readout=is_midas, norm=not is_midas,
                                        positions=arch.positions, cnn_levels=arch.cnn_levels)
        self.decoder = Decoder(arch.channels, arch.widths)
        self.head = DepthHead(arch.widths[0], align_corners=arch.family != MIDAS_SMALL)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(image)), image.shape[2:]).squeeze(1)


def build_network(arch: Architecture, device: torch.device | str = "cpu") -> DepthNet:
    """Random-weight network in eval mode; ``device="meta"`` allocates nothing (key/shape checks)."""
    with torch.device(device):
        return DepthNet(arch).eval()
