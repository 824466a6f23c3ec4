"""Seed 003's detail losses, as options of ``train fit``: gradient-L1 on the dense maps, and a
PatchGAN discriminator that judges local patches of (image, nearness, correspondence).

Both look only at the surface maps (nearness and correspondence) inside the true head mask: the
likelihood losses already fit the values; these two ask for the right local shape (edges of the
nose, lips and eyelids), which a per-pixel loss tends to blur.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .network import NEARNESS_UNIT

SURFACE_CHANNELS = slice(0, 4)      # nearness, correspondence (3) in the network's dense output
DISCRIMINATOR_LR = 2e-4


def surface_maps(dense: torch.Tensor, batch: dict) -> torch.Tensor:
    """(N, 4, S, S) nearness (shift-free over the mask) and correspondence, zero outside the true
    mask; ``dense`` None gives the ground truth's."""
    mask = batch["mask"].float()[:, None]
    if dense is None:
        maps = torch.cat([batch["nearness"][:, None] / NEARNESS_UNIT, batch["coords"]], 1)
    else:
        maps = dense[:, SURFACE_CHANNELS]
    shift = (maps[:, :1] * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp(min=1)
    return torch.cat([maps[:, :1] - shift, maps[:, 1:]], 1) * mask


def gradient_l1(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 difference of the maps' horizontal and vertical finite differences, over pixel pairs
    that both lie in ``mask`` (N, S, S)."""
    total, count = predicted.new_zeros(()), predicted.new_zeros(())
    for axis in (-1, -2):
        length = predicted.shape[axis] - 1
        pair = (mask.narrow(axis, 0, length) & mask.narrow(axis, 1, length)).float()[:, None]
        difference = torch.diff(predicted, dim=axis) - torch.diff(target, dim=axis)
        total = total + (difference.abs() * pair).sum()
        count = count + pair.sum() * predicted.shape[1]
    return total / count.clamp(min=1)


class PatchDiscriminator(nn.Module):
    """A conditional PatchGAN (pix2pix-style, scaled to the 64-pixel maps): one real/fake logit
    per overlapping ~22-pixel patch of the image (pooled to map size) and its surface maps."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride, norm=True):
            layers = [nn.Conv2d(cin, cout, 4, stride, 1, bias=not norm)]
            if norm:
                layers.append(nn.InstanceNorm2d(cout, affine=True))
            return layers + [nn.LeakyReLU(0.2, inplace=True)]

        self.layers = nn.Sequential(*block(3 + 4, width, 2, norm=False), *block(width, 2 * width, 2),
                                    *block(2 * width, 4 * width, 1), nn.Conv2d(4 * width, 1, 4, 1, 1))

    def forward(self, image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image
        x = F.adaptive_avg_pool2d(x, maps.shape[-2:]) * 2 - 1
        return self.layers(torch.cat([x, maps], 1))


class Adversary:
    """The discriminator, its optimiser and the two least-squares GAN losses of one step."""

    def __init__(self, device: torch.device, state: dict | None = None):
        self.network = PatchDiscriminator().to(device)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=DISCRIMINATOR_LR, betas=(0.5, 0.999))
        if state:
            self.network.load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])

    def state(self) -> dict:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def generator_loss(self, image: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """How far the predicted maps are from fooling the discriminator (the network's term)."""
        return ((self.network(image, fake) - 1) ** 2).mean()

    def step(self, image: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One discriminator update on a batch of true and (detached) predicted maps; its loss."""
        loss = (((self.network(image, real) - 1) ** 2).mean() + (self.network(image, fake.detach()) ** 2).mean()) / 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
