"""Installed depth checkpoints: ``<data dir>/depth/<name>.pt`` plus ``<name>.json`` (architecture, size).

The data dir is ``$FACEFORGE_DATA`` if set, else the per-user data folder of the OS. Installing
checks the file completely first (keys and shapes against its architecture), so a name that
resolves always names a usable checkpoint. Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data_dir import data_dir, write_atomically
from .checkpoints import CheckpointError, detect_architecture, from_upstream, read_state_dict
from .networks import build_network, get_architecture

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def depth_dir(root: Path | None = None) -> Path:
    return (root or data_dir()) / "depth"


def install_checkpoint(path: str | Path, root: Path | None = None, architecture: str = "auto",
                       overwrite: bool = False) -> Path:
    """Validate ``path`` and copy it into the store under its own file name; returns the installed path."""
    source = Path(path)
    upstream = read_state_dict(source)
    arch = detect_architecture(upstream) if architecture == "auto" else get_architecture(architecture)
    from_upstream(upstream, build_network(arch, "meta"))
    target_dir = depth_dir(root)
    target = target_dir / (source.stem + ".pt")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} is already installed (overwrite to replace it)")
    write_atomically(target, lambda temporary: shutil.copyfile(source, temporary))
    target.with_suffix(".json").write_text(json.dumps(
        {"architecture": arch.id, "source": source.name, "bytes": target.stat().st_size}, indent=1))
    return target


def installed(root: Path | None = None) -> dict[str, str]:
    """Installed checkpoint name -> architecture id."""
    folder = depth_dir(root)
    if not folder.is_dir():
        return {}
    return {meta.stem: json.loads(meta.read_text()).get("architecture", "?")
            for meta in sorted(folder.glob("*.json")) if meta.with_suffix(".pt").is_file()}


def find_installed(name: str, root: Path | None = None) -> Path:
    """An installed checkpoint by name (``depth_anything_v2_vits``, with or without its suffix) or by
    architecture id when exactly one of that architecture is installed. Never a path: this is what a
    request may name, so a client can only pick among files the user installed."""
    names = installed(root)
    stem = Path(name).stem if Path(name).suffix in SUFFIXES else name
    if stem in names:
        return depth_dir(root) / f"{stem}.pt"
    by_arch = [n for n, arch in names.items() if arch == name]
    if len(by_arch) == 1:
        return depth_dir(root) / f"{by_arch[0]}.pt"
    known = ", ".join(f"{n} ({a})" for n, a in names.items()) or "none"
    raise CheckpointError(f"depth model {name!r} is not installed (installed in {depth_dir(root)}: {known}); "
                          "install one with `python -m inference_server model install CHECKPOINT`")


def find_checkpoint(name_or_path: str | Path, root: Path | None = None) -> Path:
    """An existing file path as is (the server operator's or a local caller's choice), else an
    installed checkpoint (``find_installed``)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    return find_installed(str(name_or_path), root)
