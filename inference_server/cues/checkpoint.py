"""Cues checkpoints: one file format for training snapshots and shipped weights.

A checkpoint is a ``torch.save`` dict read back with ``weights_only=True`` (no code runs on load):
``format``, ``version``, ``config`` (a ``CuesConfig`` as a dict), ``state_dict``, ``provenance``
(how it was trained), and in training snapshots ``optimizer``, ``step`` and any other training
state (e.g. the discriminator's). Loading checks the
format, the keys and shapes against the config's network, and that every weight is finite, and
says what is wrong in one ``CheckpointError``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..data_dir import data_dir, write_atomically
from ..torch_files import load_tensors

FORMAT, VERSION = "faceforge-cues", 1
INSTALLED_NAME = "cues/cues.pt"
SHIPPED = Path(__file__).with_name("weights") / "cues-cpu.pt"
MAX_BYTES = 512 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


def save(path: Path, network, provenance: dict, optimizer=None, step: int | None = None, half: bool = False,
         extra: dict | None = None) -> None:
    """Atomically write ``network``'s checkpoint (``half``: float16 weights, for shipping; ``extra``:
    more training state, tensors and plain values only)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in network.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": network.config.to_dict(), "state_dict": state,
               "provenance": provenance}
    if optimizer is not None:
        payload["optimizer"], payload["step"] = optimizer.state_dict(), step
    payload.update(extra or {})
    write_atomically(Path(path), lambda temporary: torch.save(payload, temporary))


def read(path: Path) -> dict:
    """The checkpoint's dict, checked for format and size; never unpickles code."""
    payload = load_tensors(path, MAX_BYTES, CheckpointError, "cues checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a FaceForge cues checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is cues checkpoint version {payload.get('version')}; this server reads {VERSION}")
    return payload


def load(path: Path, device: torch.device = torch.device("cpu")):
    """The network of a checkpoint, in eval mode on ``device``."""
    from .network import CuesConfig, CuesNet

    payload = read(path)
    try:
        network = CuesNet(CuesConfig.from_dict(payload["config"]))
    except Exception as exc:
        raise CheckpointError(f"{path} has an unusable network config: {exc}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no state_dict")
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.shape != expected[key].shape:
            raise CheckpointError(f"{path}: {key} has the wrong shape")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: {key} holds NaN or infinite weights")
        if value.dtype.is_floating_point != expected[key].dtype.is_floating_point:
            raise CheckpointError(f"{path}: {key} has dtype {value.dtype}")
    network.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return network.to(device).eval()


def installed_path(root: Path | None = None) -> Path:
    return (root or data_dir()) / INSTALLED_NAME


def find(root: Path | None = None) -> Path:
    """The weights head mode uses: an installed checkpoint (``model install``) over the shipped one."""
    installed = installed_path(root)
    return installed if installed.is_file() else SHIPPED


def is_cues_file(path: Path) -> bool:
    """Whether ``path`` reads as a cues checkpoint (what ``model install`` installs as one)."""
    try:
        read(path)
    except CheckpointError:
        return False
    return True


def install(source: Path, root: Path | None = None) -> Path:
    """Check ``source`` completely (it loads into its network) and copy it to the data folder,
    where it replaces the shipped weights; returns the installed path."""
    load(source)
    target = installed_path(root)
    write_atomically(target, lambda temporary: shutil.copyfile(source, temporary))
    return target
