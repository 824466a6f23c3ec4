"""Training and evaluation of the cues network on ``dataset`` shards.

Losses: the head mask (binary cross-entropy); correspondence and shift-free nearness as Laplace
negative log-likelihoods with the predicted log-scales (so the network learns where it is unsure:
the fit's confidence); identity as the RMS vertex error over the face region in millimetres (the
coefficients' error through the model's own basis, so modes weigh by how much they move the face).
Mirror augmentation (``mirror``): half the samples of a batch are flipped left-right, with the
correspondence's x negated (the model's symmetry plane is x = 0) and the identity mirrored through
the model's basis, so the network sees both sides of every face and learns to answer a mirrored
photo with the mirrored head. CPU by default, CUDA with bf16 autocast when asked; resumable from
the last snapshot.
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
from .network import NEARNESS_UNIT, CuesNet, build

LOG_SCALE_RANGE = (-7.0, 3.0)
IDENTITY_WEIGHT = 0.2        # per millimetre of identity RMS error


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


def identity_metric(model) -> torch.Tensor:
    """(100, 100) Gram matrix G of the identity modes over the face region, in mm^2 per vertex:
    ``d @ G @ d`` is the mean squared vertex displacement of a coefficient error ``d``."""
    basis = model.id_deltas[:, model.face_mask].astype(np.float64).reshape(len(model.id_deltas), -1)
    return torch.from_numpy(1e6 * basis @ basis.T / model.face_mask.sum()).float()


def mirrored(batch: dict, chosen: torch.Tensor, identity_mirror: torch.Tensor) -> dict:
    """``batch`` with the ``chosen`` samples flipped left-right (image, maps, correspondence x, identity)."""
    def pick(flipped, original):
        return torch.where(chosen.view(-1, *[1] * (original.dim() - 1)), flipped, original)

    coords = batch["coords"].flip(-1) * torch.tensor([-1.0, 1.0, 1.0], device=chosen.device).view(1, 3, 1, 1)
    return batch | {"image": pick(batch["image"].flip(-1), batch["image"]),
                    "nearness": pick(batch["nearness"].flip(-1), batch["nearness"]),
                    "mask": pick(batch["mask"].flip(-1), batch["mask"]),
                    "coords": pick(coords, batch["coords"]),
                    "id_coeffs": pick(batch["id_coeffs"] @ identity_mirror.T, batch["id_coeffs"])}


def losses(dense: torch.Tensor, identity: torch.Tensor, batch: dict, metric: torch.Tensor) -> dict:
    """Each loss term (scalars) of one batch."""
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
    return {"mask": F.binary_cross_entropy_with_logits(dense[:, 6], mask),
            "nearness": near_nll.sum() / count, "coords": coord_nll.sum() / count,
            "identity": IDENTITY_WEIGHT * identity_mm.mean()}


def train(data: Path, out: Path, model, config: TrainConfig = TrainConfig(), device: torch.device = torch.device("cpu"),
          report: Callable[[str], None] = print) -> Path:
    """Train (or resume) ``config.variant`` on the shards in ``data``; snapshots go to ``out``
    (``last.pt``), the final weights to ``out/<variant>.pt``. Returns that path."""
    from .dataset import Shards

    torch.manual_seed(config.seed)
    train_set, _ = Shards.in_folder(data, config.holdout_shards)
    network = build(config.variant).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    snapshot, step = out / "last.pt", 0
    if snapshot.exists():
        payload = checkpoint.read(snapshot)
        network.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        report(f"resumed at step {step}")
    elif config.init:
        start_from = checkpoint.load(Path(config.init))
        if start_from.config != network.config:
            raise ValueError(f"{config.init} is not a {config.variant} network")
        network.load_state_dict(start_from.state_dict())
        report(f"starting from the weights of {config.init}")
    metric = identity_metric(model).to(device)
    flip = torch.from_numpy(identity_mirror(model)).to(device) if config.mirror else None
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
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, step)
            with autocast:
                dense, identity = network(batch["image"])
            terms = losses(dense.float(), identity.float(), batch, metric)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 5.0)
            optimizer.step()
            step, seen = step + 1, seen + len(batch["image"])
            if step % 20 == 0 or step == config.steps:
                rate = seen / (time.perf_counter() - start)
                eta = (config.steps - step) * config.batch / rate
                report(f"step {step}/{config.steps} loss {float(loss.detach()):.3f} "
                       + " ".join(f"{k} {float(v.detach()):.3f}" for k, v in terms.items())
                       + f" | {rate:.1f} samples/s, {eta / 60:.1f} min left")
            if step % config.snapshot_every == 0 or step == config.steps:
                checkpoint.save(snapshot, network, provenance | {"step": step}, optimizer, step)
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
    px, median), mask IoU, identity RMS (mm) of the prediction and of the mean head (zero)."""
    from .synth import COORD_SCALE

    metric = identity_metric(model).to(device)
    coord, near, inter, union, ident, zero = [], [], 0.0, 0.0, [], []
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
        predicted = dense[:, 6] > 0
        inter += float((predicted & mask).sum())
        union += float((predicted | mask).sum())
        for values, out in ((identity - b["id_coeffs"], ident), (-b["id_coeffs"], zero)):
            out.append(torch.sqrt(torch.einsum("bi,ij,bj->b", values, metric, values)))
    return {"coords_mm": float(torch.cat(coord).median()), "nearness_px": float(torch.cat(near).median()),
            "mask_iou": inter / max(union, 1.0), "identity_mm": float(torch.cat(ident).mean()),
            "identity_mean_head_mm": float(torch.cat(zero).mean()), "samples": len(shards)}

