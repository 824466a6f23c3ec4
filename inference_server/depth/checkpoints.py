"""Published checkpoint files as they are: their key layout, architecture detection and loading.

The upstream repositories (isl-org/MiDaS, DepthAnything/Depth-Anything-V2) save their own module
trees; ours differ, so each family has a table of (upstream prefix, our prefix) pairs that renames
every key both ways. A file is accepted only when, after renaming, its keys and shapes equal the
network's exactly (a few upstream-only tensors that the network derives itself are dropped);
otherwise ``CheckpointError`` names the first missing, unexpected or misshapen tensors and no
model is returned, so a half-loaded network cannot exist.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..torch_files import load_tensors
from .networks import (ARCHITECTURES, DEPTH_ANYTHING_V2, MIDAS_SMALL, Architecture, DepthNet, build_network,
                       get_architecture)

# Upstream tensors with no counterpart here: classifier heads the depth models never use, the
# DINOv2 mask token (training only), and buffers timm now recomputes (BEiT's position index, zero k-bias).
_UNUSED_DEPTH_ANYTHING = re.compile(r"^pretrained\.mask_token$")
_UNUSED_MIDAS = re.compile(r"^pretrained\.model\.(head|pre_logits)\.|\.relative_position_index$|\.attn\.k_bias$")


# The largest published layout supported (BEiT-L/16 at 512) is ~1.4 GB; anything far larger is not one.
MAX_CHECKPOINT_BYTES = 4 << 30


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which tensor or why."""


def _decoder_rules(scratch: str, head: list[tuple[str, str]]) -> list[tuple[str, str]]:
    rules = []
    for i in range(1, 5):
        rules += [(f"{scratch}layer{i}_rn.", f"decoder.adapt.{i - 1}."),
                  (f"{scratch}refinenet{i}.out_conv.", f"decoder.fusion.{i - 1}.out_conv."),
                  (f"{scratch}refinenet{i}.resConfUnit1.", f"decoder.fusion.{i - 1}.skip_unit."),
                  (f"{scratch}refinenet{i}.resConfUnit2.", f"decoder.fusion.{i - 1}.unit.")]
    return rules + head


_MIDAS_HEAD = [("scratch.output_conv.0.", "head.conv1."), ("scratch.output_conv.2.", "head.conv2."),
               ("scratch.output_conv.4.", "head.conv3.")]
# MiDaS small's encoder is EfficientNet-Lite3 cut into four Sequentials: stem (conv, bn, act) + stages 0-1,
# stage 2, stages 3-4, stages 5-6.
_EFFNET = [("pretrained.layer1.0.", "encoder.backbone.conv_stem."),
           ("pretrained.layer1.1.", "encoder.backbone.bn1.")] + [
    (f"pretrained.layer{layer}.{index}.", f"encoder.backbone.blocks.{stage}.")
    for layer, index, stage in ((1, 3, 0), (1, 4, 1), (2, 0, 2), (3, 0, 3), (3, 1, 4), (4, 0, 5), (4, 1, 6))]


def key_rules(arch: Architecture) -> list[tuple[str, str]]:
    """(upstream prefix, our prefix) pairs covering every tensor of ``arch``."""
    if arch.family == MIDAS_SMALL:
        return _EFFNET + _decoder_rules("scratch.", _MIDAS_HEAD)
    if arch.family == DEPTH_ANYTHING_V2:
        rules = [("pretrained.", "encoder.backbone.")]
        for i in range(4):
            rules += [(f"depth_head.projects.{i}.", f"encoder.reassemble.{i}.project."),
                      (f"depth_head.resize_layers.{i}.", f"encoder.reassemble.{i}.resample.")]
        head = [("depth_head.scratch.output_conv1.", "head.conv1."),
                ("depth_head.scratch.output_conv2.0.", "head.conv2."),
                ("depth_head.scratch.output_conv2.2.", "head.conv3.")]
        return rules + _decoder_rules("depth_head.scratch.", head)
    rules = [("pretrained.model.", "encoder.backbone.")]
    for i in range(arch.cnn_levels, 4):  # MiDaS act_postprocess: readout, transpose, unflatten, 1x1 conv, resample
        rules += [(f"pretrained.act_postprocess{i + 1}.0.project.0.", f"encoder.readout.{i}.proj."),
                  (f"pretrained.act_postprocess{i + 1}.3.", f"encoder.reassemble.{i}.project."),
                  (f"pretrained.act_postprocess{i + 1}.4.", f"encoder.reassemble.{i}.resample.")]
    return rules + _decoder_rules("scratch.", _MIDAS_HEAD)


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    matches = [(src, dst) for src, dst in rules if key.startswith(src)]
    if not matches:
        return None
    src, dst = max(matches, key=lambda rule: len(rule[0]))
    return dst + key[len(src):]


def to_upstream(state: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """Our state dict under the upstream key names (what the published file for ``arch`` holds)."""
    rules = [(dst, src) for src, dst in key_rules(arch)]
    renamed = {}
    for key, value in state.items():
        upstream = _rename(key, rules)
        if upstream is None:
            raise KeyError(f"{arch.id}: no upstream name for {key!r}")
        renamed[upstream] = value
    return renamed


def _dropped(key: str, arch: Architecture) -> bool:
    pattern = _UNUSED_DEPTH_ANYTHING if arch.family == DEPTH_ANYTHING_V2 else _UNUSED_MIDAS
    return bool(pattern.search(key))


def from_upstream(upstream: dict[str, torch.Tensor], model: DepthNet) -> dict[str, torch.Tensor]:
    """Rename a published state dict for ``model`` and check it tensor by tensor, before any copy."""
    arch = model.arch
    rules = key_rules(arch)
    expected = model.state_dict()
    mapped, unexpected = {}, []
    for key, value in upstream.items():
        ours = _rename(key, rules)
        if ours is not None and ours in expected:
            mapped[ours] = value
        elif not _dropped(key, arch):
            unexpected.append(key)
    upstream_rules = [(dst, src) for src, dst in rules]
    # BatchNorm's step counter is bookkeeping for training; older files may lack it.
    missing = [_rename(k, upstream_rules) for k in expected
               if k not in mapped and not k.endswith("num_batches_tracked")]
    misshapen = [f"{_rename(k, upstream_rules)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                 for k, v in mapped.items() if v.shape != expected[k].shape]
    # What the shapes do not catch: bool or integer weights, and NaN or infinite ones, which would load
    # and then answer every request with garbage or an internal error.
    mistyped = [f"{_rename(k, upstream_rules)} {v.dtype}" for k, v in mapped.items()
                if v.is_complex() or _kind(v.dtype) != _kind(expected[k].dtype)]
    nonfinite = [_rename(k, upstream_rules) for k, v in mapped.items()
                 if v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all())]
    problems = [(name, items) for name, items in
                (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen),
                 ("of the wrong kind", mistyped), ("holding NaN or infinite values", nonfinite)) if items]
    if problems:
        detail = "; ".join(f"{len(items)} {name}: {', '.join(items[:3])}{', ...' if len(items) > 3 else ''}"
                           for name, items in problems)
        raise CheckpointError(f"checkpoint does not match {arch.id}: {detail}")
    return mapped


def _kind(dtype: torch.dtype) -> str:
    return "float" if dtype.is_floating_point else "bool" if dtype == torch.bool else "integer"


def detect_architecture(upstream: dict[str, torch.Tensor]) -> Architecture:
    """Which supported network a published state dict belongs to, from its keys and shapes."""
    def width(key: str) -> int | None:
        return int(upstream[key].shape[-1]) if key in upstream else None

    if any(k.startswith("depth_head.") for k in upstream):
        by_width = {384: "depth_anything_v2_vits", 768: "depth_anything_v2_vitb", 1024: "depth_anything_v2_vitl"}
        dim = width("pretrained.cls_token")
        if dim not in by_width:
            raise CheckpointError(f"Depth Anything checkpoint with token width {dim}: only ViT-S/B/L "
                                  "(384/768/1024) are supported")
        return ARCHITECTURES[by_width[dim]]
    if "pretrained.layer1.0.weight" in upstream:
        return ARCHITECTURES["midas_v21_small_256"]
    if "pretrained.model.patch_embed.backbone.stem.conv.weight" in upstream:
        return ARCHITECTURES["dpt_hybrid_384"]
    table = "pretrained.model.blocks.0.attn.relative_position_bias_table"
    if table in upstream:
        if upstream[table].shape[0] != (2 * 512 // 16 - 1) ** 2 + 3 or width("pretrained.model.cls_token") != 1024:
            raise CheckpointError("BEiT checkpoint other than BEiT-L/16 at 512: only dpt_beit_large_512 is supported")
        return ARCHITECTURES["dpt_beit_large_512"]
    if width("pretrained.model.pos_embed") == 1024:
        return ARCHITECTURES["dpt_large_384"]
    sample = ", ".join(list(upstream)[:3])
    raise CheckpointError(f"not a supported depth checkpoint (first keys: {sample}); supported: "
                          f"{', '.join(ARCHITECTURES)}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from the usual {'model'|'state_dict': ...} envelopes."""
    data = load_tensors(Path(path), MAX_CHECKPOINT_BYTES, CheckpointError)
    for envelope in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(envelope), dict):
            data = data[envelope]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_network(path: str | Path, architecture: str = "auto", device: torch.device | str = "cpu") -> DepthNet:
    """Build the checkpoint's network and fill every tensor from the file (or raise CheckpointError).

    The network is laid out on the ``meta`` device first: checking a file costs no memory, and the
    weights are written once (random initialisation of a ViT-L alone takes ~10 s on two cores)."""
    upstream = read_state_dict(path)
    arch = detect_architecture(upstream) if architecture == "auto" else get_architecture(architecture)
    return network_from_state_dict(upstream, arch, device)


def network_from_state_dict(upstream: dict[str, torch.Tensor], arch: Architecture,
                            device: torch.device | str = "cpu") -> DepthNet:
    """``arch`` with every tensor from a published-layout state dict (or CheckpointError)."""
    model = build_network(arch, "meta")
    mapped = from_upstream(upstream, model)
    model = model.to_empty(device=device)
    model.load_state_dict(mapped, strict=False)
    fill_unsaved_buffers(model, set(mapped))
    return model.eval()


def fill_unsaved_buffers(model: DepthNet, loaded: set[str]) -> None:
    """Buffers the file does not carry are uninitialised after ``to_empty``: recompute them."""
    for module_name, module in model.named_modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()  # timm: BEiT's position index and zero k-bias
            continue
        for name, buffer in module.named_buffers(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if full in loaded:
                continue
            if name != "num_batches_tracked":
                raise CheckpointError(f"{model.arch.id}: buffer {full} is neither saved nor derivable")
            buffer.zero_()
