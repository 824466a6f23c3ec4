"""Training and evaluation of the cues network on ``dataset`` shards.

Losses: the head mask (binary cross-entropy); correspondence and shift-free nearness as Laplace
negative log-likelihoods with the predicted log-scales (so the network learns where it is unsure:
the fit's confidence); identity as the RMS vertex error over the face region in millimetres (the
coefficients' error through the model's own basis, so modes weigh by how much they move the face).
Mirror augmentation (``mirror``): half the samples of a batch are flipped left-right, with the
correspondence's x negated (the model's symmetry plane is x = 0) and the identity mirrored through
the model's basis, so the network sees both sides of every face and learns to answer a mirrored
photo with the mirrored head. Low-resolution augmentation (``low_resolution``): that fraction of
the samples is shrunk to 30-100 % and enlarged back, as a small face in a photo is. Options from
seed 003 (``detail_losses``): gradient-L1 on the maps and a PatchGAN discriminator. CPU by
default, CUDA with bf16 autocast when asked; resumable from the last snapshot.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ..head.symmetry import identity_mirror
from . import checkpoint
from .detail_losses import Adversary, gradient_l1, surface_maps
from .network import NEARNESS_UNIT, CuesNet, build, mirror_maps

LOG_SCALE_RANGE = (-7.0, 3.0)
IDENTITY_WEIGHT = 0.2        # per millimetre of identity RMS error
SMALLEST_SCALE = 0.3         # low-resolution augmentation shrinks to this fraction of the side at most


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "cues-cpu"
    steps: int = 3000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    seed: int = 0
    snapshot_every: int = 100
    holdout_shards: int = 1
    init: str = ""               # a checkpoint whose weights a fresh run starts from (fine-tuning)
    mirror: bool = True          # flip half of each batch left-right (``mirrored``)
    low_resolution: float = 0.0  # fraction of the samples shrunk and enlarged back (``low_resolution``)
    gradient_l1: float = 0.0     # weight of the maps' gradient-L1 loss (0: off)
    adversarial: float = 0.0     # weight of the PatchGAN generator loss (0: off, no discriminator)


def identity_metric(model) -> torch.Tensor:
    """(100, 100) Gram matrix G of the identity modes over the face region, in mm^2 per vertex:
    ``d @ G @ d`` is the mean squared vertex displacement of a coefficient error ``d``."""
    basis = model.id_deltas[:, model.face_mask].astype(np.float64).reshape(len(model.id_deltas), -1)
    return torch.from_numpy(1e6 * basis @ basis.T / model.face_mask.sum()).float()


def mirrored(batch: dict, chosen: torch.Tensor, identity_mirror: torch.Tensor) -> dict:
    """``batch`` with the ``chosen`` samples flipped left-right (image, maps, correspondence x, identity)."""
    def pick(flipped, original):
        return torch.where(chosen.view(-1, *[1] * (original.dim() - 1)), flipped, original)

    return batch | {"image": pick(batch["image"].flip(-1), batch["image"]),
                    "nearness": pick(batch["nearness"].flip(-1), batch["nearness"]),
                    "mask": pick(batch["mask"].flip(-1), batch["mask"]),
                    "coords": pick(mirror_maps(batch["coords"], x_channel=0), batch["coords"]),
                    "id_coeffs": pick(batch["id_coeffs"] @ identity_mirror.T, batch["id_coeffs"])}


def low_resolution(images: torch.Tensor, chosen: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, S, S) ``images`` with the ``chosen`` ones shrunk to a random 30-100 % of their
    side (area averaging) and enlarged back (bilinear): the blur of a face that filled few pixels."""
    images = images.clone()
    side = images.shape[-1]
    for index in torch.nonzero(chosen).flatten().tolist():
        factor = SMALLEST_SCALE + (1 - SMALLEST_SCALE) * float(torch.rand((), generator=generator))
        small = F.interpolate(images[index:index + 1].float(), size=max(8, round(side * factor)), mode="area")
        back = F.interpolate(small, size=side, mode="bilinear", align_corners=False)
        images[index] = back[0].round().clamp(0, 255).to(images.dtype)
    return images


def losses(dense: torch.Tensor, identity: torch.Tensor, batch: dict, metric: torch.Tensor,
           config: TrainConfig = TrainConfig(), adversary: Adversary | None = None) -> dict:
    """Each loss term (scalars) of one batch; the detail terms only where ``config`` weighs them."""
    mask = batch["mask"].float()
    count = mask.sum().clamp(min=1)
    near_scale, coord_scale = (dense[:, 4].clamp(*LOG_SCALE_RANGE), dense[:, 5].clamp(*LOG_SCALE_RANGE))
    error = dense[:, 0] - batch["nearness"] / NEARNESS_UNIT
    per_image = mask.sum((1, 2)).clamp(min=1)
    error = error - ((error * mask).sum((1, 2)) / per_image)[:, None, None]
    near_nll = (error.abs() * torch.exp(-near_scale) + near_scale) * mask
    coord_error = (dense[:, 1:4] - batch["coords"]).abs().mean(1)
    coord_nll = (coord_error * torch.exp(-coord_scale) + coord_scale) * mask
    difference = identity - batch["id_coeffs"]
    identity_mm = torch.sqrt(torch.einsum("bi,ij,bj->b", difference, metric, difference).clamp(min=1e-8))
    terms = {"mask": F.binary_cross_entropy_with_logits(dense[:, 6], mask),
             "nearness": near_nll.sum() / count, "coords": coord_nll.sum() / count,
             "identity": IDENTITY_WEIGHT * identity_mm.mean()}
    if config.gradient_l1 or adversary is not None:
        predicted, target = surface_maps(dense, batch), surface_maps(None, batch)
        if config.gradient_l1:
            terms["gradient"] = config.gradient_l1 * gradient_l1(predicted, target, batch["mask"])
        if adversary is not None:
            terms["adversarial"] = config.adversarial * adversary.generator_loss(batch["image"], predicted)
    return terms


def train(data: Path, out: Path, model, config: TrainConfig = TrainConfig(), device: torch.device = torch.device("cpu"),
          report: Callable[[str], None] = print) -> Path:
    """Train (or resume) ``config.variant`` on the shards in ``data``; snapshots go to ``out``
    (``last.pt``), the final weights to ``out/<variant>.pt``. Returns that path."""
    from .dataset import Shards

    torch.manual_seed(config.seed)
    train_set, _ = Shards.in_folder(data, config.holdout_shards)
    network = build(config.variant).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    snapshot, step, adversary_state = out / "last.pt", 0, None
    if snapshot.exists():
        payload = checkpoint.read(snapshot)
        network.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        adversary_state = payload.get("adversary")
        report(f"resumed at step {step}")
    elif config.init:
        start_from = checkpoint.load(Path(config.init))
        if start_from.config != network.config:
            raise ValueError(f"{config.init} is not a {config.variant} network")
        network.load_state_dict(start_from.state_dict())
        report(f"starting from the weights of {config.init}")
    metric = identity_metric(model).to(device)
    flip = torch.from_numpy(identity_mirror(model)).to(device) if config.mirror else None
    adversary = Adversary(device, adversary_state) if config.adversarial else None
    provenance = {"command": "python -m inference_server train fit", "train": asdict(config),
                  "samples": len(train_set), "data": str(data)}
    if config.init:
        provenance["init_provenance"] = checkpoint.read(Path(config.init)).get("provenance", {})
    generator = torch.Generator().manual_seed(config.seed * 1000 + step)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch, shuffle=True, drop_last=True,
                                         generator=generator)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    network.train()
    start, seen = time.perf_counter(), 0
    while step < config.steps:
        for batch in loader:
            if step >= config.steps:
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if flip is not None:
                batch = mirrored(batch, (torch.rand(len(batch["image"]), generator=generator) < 0.5).to(device), flip)
            if config.low_resolution:
                chosen = torch.rand(len(batch["image"]), generator=generator) < config.low_resolution
                batch["image"] = low_resolution(batch["image"], chosen.to(device), generator)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step)
            with autocast:
                dense, identity = network(batch["image"])
            terms = losses(dense.float(), identity.float(), batch, metric, config, adversary)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
            optimizer.step()
            if adversary is not None:
                terms["discriminator"] = adversary.step(batch["image"], surface_maps(None, batch),
                                                        surface_maps(dense.float(), batch))
            step, seen = step + 1, seen + len(batch["image"])
            if step % 20 == 0 or step == config.steps:
                rate = seen / (time.perf_counter() - start)
                eta = (config.steps - step) * config.batch / rate
                report(f"step {step}/{config.steps} loss {float(loss.detach()):.3f} "
                       + " ".join(f"{k} {float(v.detach()):.3f}" for k, v in terms.items())
                       + f" | {rate:.1f} samples/s, {eta / 60:.1f} min left")
            if step % config.snapshot_every == 0 or step == config.steps:
                checkpoint.save(snapshot, network, provenance | {"step": step}, optimizer, step,
                                extra={"adversary": adversary.state()} if adversary else None)
    final = out / f"{config.variant}.pt"
    checkpoint.save(final, network, provenance | {"step": step}, half=True)
    return final


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.inference_mode()
def evaluate(network: CuesNet, shards, model, device: torch.device = torch.device("cpu"), batch: int = 64) -> dict:
    """Held-out errors: correspondence (mm, median over masked pixels), shift-free nearness (crop
    px, median), its local slope (the error of neighbouring pixels' nearness differences, crop px,
    median: what the detail losses aim at), mask IoU, identity RMS (mm) of the prediction and of the
    mean head (zero)."""
    from .synth import COORD_SCALE

    metric = identity_metric(model).to(device)
    coord, near, slope, inter, union, ident, zero = [], [], [], 0.0, 0.0, [], []
    network.eval()
    for start in range(0, len(shards), batch):
        items = [shards[i] for i in range(start, min(len(shards), start + batch))]
        b = {k: torch.stack([item[k] for item in items]).to(device) for k in items[0]}
        dense, identity = network(b["image"])
        dense, identity = dense.float(), identity.float()
        mask = b["mask"]
        coord.append((1000 * COORD_SCALE * (dense[:, 1:4] - b["coords"]).norm(dim=1))[mask])
        error = dense[:, 0] * NEARNESS_UNIT - b["nearness"]
        shift = (error * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)
        near.append((error - shift[:, None, None]).abs()[mask])
        for axis in (-1, -2):
            length = mask.shape[axis] - 1
            pair = mask.narrow(axis, 0, length) & mask.narrow(axis, 1, length)
            slope.append(torch.diff(error, dim=axis).abs()[pair])
        predicted = dense[:, 6] > 0
        inter += float((predicted & mask).sum())
        union += float((predicted | mask).sum())
        for values, out in ((identity - b["id_coeffs"], ident), (-b["id_coeffs"], zero)):
            out.append(torch.sqrt(torch.einsum("bi,ij,bj->b", values, metric, values)))
    return {"coords_mm": float(torch.cat(coord).median()), "nearness_px": float(torch.cat(near).median()),
            "nearness_slope_px": float(torch.cat(slope).median()),
            "mask_iou": inter / max(union, 1.0), "identity_mm": float(torch.cat(ident).mean()),
            "identity_mean_head_mm": float(torch.cat(zero).mean()), "samples": len(shards)}

