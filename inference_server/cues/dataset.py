"""Training data on disk: shards of ``synth`` samples, written resumably, read back as tensors.

A shard is one uncompressed ``.npz`` of ``SHARD_SIZE`` samples (indices ``[k * size, (k + 1) *
size)`` of one seed), written to a temporary name and renamed, so an interrupted run leaves only
whole shards and ``generate`` continues where it stopped.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

FIELDS = ("image", "nearness", "coords", "mask", "id_coeffs", "exp_weights", "pose", "beyond")
SHARD_SIZE = 500


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard_{shard:05d}.npz"


def generate(model_path: Path, folder: Path, count: int, seed: int, shard_size: int = SHARD_SIZE,
             report: Callable[[str], None] = print, shards: range | None = None) -> list[Path]:
    """Write the shards of ``count`` samples of ``seed`` that are not there yet (``shards``
    restricts to a subset, e.g. to split the work across processes)."""
    from ..head.model import HeadModel
    from .synth import Generator

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"seed": seed, "count": count, "shard_size": shard_size}
    meta_path = folder / "dataset.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{folder} holds another dataset ({meta_path.read_text().strip()}); use an empty folder")
    meta_path.write_text(json.dumps(meta))
    total = (count + shard_size - 1) // shard_size
    todo = [k for k in (shards or range(total)) if k < total and not shard_path(folder, k).exists()]
    generator = Generator(HeadModel.load(model_path), seed) if todo else None
    start = time.perf_counter()
    for done, shard in enumerate(todo):
        indices = range(shard * shard_size, min(count, (shard + 1) * shard_size))
        samples = [generator(index) for index in indices]
        arrays = {field: np.stack([getattr(s, field) for s in samples]) for field in FIELDS}
        arrays["nearness"] = arrays["nearness"].astype(np.float16)
        arrays["coords"] = arrays["coords"].astype(np.float16)
        temporary = folder / f".shard_{shard:05d}.{os.getpid()}.tmp.npz"
        np.savez(temporary, **arrays)
        temporary.replace(shard_path(folder, shard))
        rate = (done + 1) * shard_size / (time.perf_counter() - start)
        report(f"shard {shard + 1}/{total} written ({rate:.1f} samples/s)")
    return [shard_path(folder, k) for k in range(total) if shard_path(folder, k).exists()]


class Shards(torch.utils.data.Dataset):
    """Every whole shard in ``folder`` (or the listed ones), held in memory."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise FileNotFoundError("no training shards found")
        parts = [dict(np.load(path, allow_pickle=False)) for path in paths]
        self.arrays = {field: np.concatenate([p[field] for p in parts]) for field in FIELDS}

    @classmethod
    def in_folder(cls, folder: Path, holdout: int = 0) -> tuple["Shards", "Shards | None"]:
        """The folder's shards split into training and the last ``holdout`` shards for evaluation."""
        paths = sorted(folder.glob("shard_*.npz"))
        if holdout and len(paths) <= holdout:
            raise ValueError(f"{folder} has {len(paths)} shards: too few to hold {holdout} out")
        return cls(paths[:len(paths) - holdout]), (cls(paths[-holdout:]) if holdout else None)

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def __getitem__(self, index):
        a = self.arrays
        return {"image": torch.from_numpy(a["image"][index]).permute(2, 0, 1),
                "nearness": torch.from_numpy(a["nearness"][index].astype(np.float32)),
                "coords": torch.from_numpy(a["coords"][index].astype(np.float32)).permute(2, 0, 1),
                "mask": torch.from_numpy(a["mask"][index]),
                "id_coeffs": torch.from_numpy(a["id_coeffs"][index])}
