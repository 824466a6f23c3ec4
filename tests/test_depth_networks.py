"""Learned depth: every architecture's published key layout, loading, refusals, store, estimator, fusion.

Weights are random (nothing is downloaded); the published files' layouts are asserted through key
names and shapes taken from the upstream model definitions (isl-org/MiDaS, Depth-Anything-V2).
Large networks are laid out on the ``meta`` device; small ones, and shrunken copies of every
family, run for real so a checkpoint round trip must reproduce the outputs bit for bit.
"""
from __future__ import annotations

import dataclasses
import fractions
import math
import os

import cv2
import numpy as np
import pytest
import torch

from inference_server.depth import (ARCHITECTURES, CheckpointError, DepthConfig, DepthEstimator, FuseConfig,
                                    build_network, detect_architecture, find_checkpoint, fuse_depth,
                                    install_checkpoint, installed, load_network, network_from_state_dict,
                                    to_upstream)
from inference_server.depth.checkpoints import from_upstream
from inference_server.depth.estimator import network_input_size
from inference_server.depth.fuse import align_to_prior, face_width, masked_blur

torch.set_num_threads(2)

# Tensors of the published files, read off the upstream model definitions: name -> shape.
PUBLISHED = {
    "dpt_large_384": {"pretrained.model.pos_embed": (1, 577, 1024),
                      "pretrained.act_postprocess1.0.project.0.weight": (1024, 2048),
                      "pretrained.act_postprocess1.4.weight": (256, 256, 4, 4),
                      "pretrained.act_postprocess2.4.weight": (512, 512, 2, 2),
                      "pretrained.act_postprocess4.4.weight": (1024, 1024, 3, 3),
                      "scratch.layer3_rn.weight": (256, 1024, 3, 3),
                      "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
                      "scratch.output_conv.4.weight": (1, 32, 1, 1)},
    "dpt_hybrid_384": {"pretrained.model.patch_embed.backbone.stem.conv.weight": (64, 3, 7, 7),
                       "pretrained.model.patch_embed.proj.weight": (768, 1024, 1, 1),
                       "pretrained.act_postprocess3.0.project.0.weight": (768, 1536),
                       "pretrained.act_postprocess3.3.weight": (768, 768, 1, 1),
                       "pretrained.act_postprocess4.4.weight": (768, 768, 3, 3),
                       "scratch.layer1_rn.weight": (256, 256, 3, 3), "scratch.layer2_rn.weight": (256, 512, 3, 3)},
    "dpt_beit_large_512": {"pretrained.model.blocks.0.attn.relative_position_bias_table": (3972, 16),
                           "pretrained.model.blocks.23.gamma_2": (1024,),
                           "pretrained.model.blocks.5.attn.q_bias": (1024,),
                           "pretrained.act_postprocess1.0.project.0.weight": (1024, 2048)},
    "midas_v21_small_256": {"pretrained.layer1.0.weight": (32, 3, 3, 3), "pretrained.layer1.1.running_var": (32,),
                            "pretrained.layer1.3.0.conv_dw.weight": (32, 1, 3, 3),
                            "pretrained.layer4.1.0.conv_pwl.weight": (384, 1392, 1, 1),
                            "scratch.layer4_rn.weight": (512, 384, 3, 3),
                            "scratch.refinenet4.out_conv.weight": (256, 512, 1, 1),
                            "scratch.refinenet1.out_conv.weight": (64, 64, 1, 1),
                            "scratch.output_conv.0.weight": (32, 64, 3, 3)},
    "depth_anything_v2_vits": {"pretrained.pos_embed": (1, 1370, 384), "pretrained.blocks.11.ls2.gamma": (384,),
                               "depth_head.projects.0.weight": (48, 384, 1, 1),
                               "depth_head.resize_layers.0.weight": (48, 48, 4, 4),
                               "depth_head.resize_layers.3.weight": (384, 384, 3, 3),
                               "depth_head.scratch.layer1_rn.weight": (64, 48, 3, 3),
                               "depth_head.scratch.output_conv1.weight": (32, 64, 3, 3),
                               "depth_head.scratch.output_conv2.0.weight": (32, 32, 3, 3),
                               "depth_head.scratch.output_conv2.2.weight": (1, 32, 1, 1)},
    "depth_anything_v2_vitb": {"pretrained.cls_token": (1, 1, 768), "depth_head.projects.3.weight": (768, 768, 1, 1),
                               "depth_head.scratch.refinenet2.resConfUnit2.conv2.bias": (128,)},
    "depth_anything_v2_vitl": {"pretrained.blocks.23.mlp.fc1.weight": (4096, 1024),
                               "depth_head.projects.1.weight": (512, 1024, 1, 1),
                               "depth_head.scratch.output_conv1.weight": (128, 256, 3, 3)},
}
# Upstream-only tensors the loader must accept and drop.
EXTRAS = {"depth_anything_v2": {"pretrained.mask_token": (1, 384)},
          "midas": {"pretrained.model.head.weight": (1000, 1024),
                    "pretrained.model.blocks.0.attn.relative_position_index": (1025, 1025)}}


def meta_upstream(arch_id: str) -> dict[str, torch.Tensor]:
    arch = ARCHITECTURES[arch_id]
    return to_upstream(build_network(arch, "meta").state_dict(), arch)


@pytest.mark.parametrize("arch_id", list(ARCHITECTURES))
def test_published_layout_is_detected_and_accepted(arch_id):
    upstream = meta_upstream(arch_id)
    for key, shape in PUBLISHED[arch_id].items():
        assert tuple(upstream[key].shape) == shape, key
    if arch_id == "dpt_hybrid_384":  # the hybrid's two finest levels are ResNet stages: no reassembly there
        assert not any(k.startswith(("pretrained.act_postprocess1.", "pretrained.act_postprocess2.")) for k in upstream)
    family = "depth_anything_v2" if arch_id.startswith("depth_anything") else "midas"
    extras = {k: torch.empty(s, device="meta") for k, s in EXTRAS[family].items()}
    assert detect_architecture(upstream).id == arch_id
    from_upstream({**upstream, **extras}, build_network(ARCHITECTURES[arch_id], "meta"))


@pytest.mark.parametrize("arch_id", ["dpt_large_384", "depth_anything_v2_vits", "midas_v21_small_256"])
def test_missing_misshapen_or_unexpected_tensor_is_named(arch_id):
    upstream = meta_upstream(arch_id)
    model = build_network(ARCHITECTURES[arch_id], "meta")
    weights = sorted(k for k in upstream if k.endswith(".weight"))
    victim = weights[len(weights) // 2]
    with pytest.raises(CheckpointError, match=rf"1 missing: {victim}$"):
        from_upstream({k: v for k, v in upstream.items() if k != victim}, model)
    bent = dict(upstream, **{victim: torch.empty(3, 5, device="meta")})
    with pytest.raises(CheckpointError, match=rf"1 misshapen: {victim} \(3, 5\)"):
        from_upstream(bent, model)
    with pytest.raises(CheckpointError, match=r"1 unexpected: scratch\.refinenet5\.out_conv\.weight"):
        from_upstream(dict(upstream, **{"scratch.refinenet5.out_conv.weight": torch.empty(1, device="meta")}), model)


def test_checkpoint_of_another_architecture_is_refused():
    with pytest.raises(CheckpointError, match="does not match dpt_hybrid_384: .*missing: pretrained.model.patch_embed"):
        from_upstream(meta_upstream("dpt_large_384"), build_network(ARCHITECTURES["dpt_hybrid_384"], "meta"))
    with pytest.raises(CheckpointError, match="not a supported depth checkpoint"):
        detect_architecture({"encoder.weight": torch.empty(1)})


def outputs(model, size: int) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return model(torch.randn(1, 3, size, size))


def save_upstream(arch, path):
    """A random network of ``arch``, saved under the upstream key names like a published file."""
    torch.manual_seed(0)
    model = build_network(arch)
    torch.save(to_upstream(model.state_dict(), arch), path)
    return model


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "midas_v21_small_256.pt"
    return save_upstream(ARCHITECTURES["midas_v21_small_256"], path), path


@pytest.mark.parametrize("arch_id,size", [("depth_anything_v2_vits", 56), ("midas_v21_small_256", 64)])
def test_small_network_round_trip_through_a_file(arch_id, size, tmp_path, small_checkpoint):
    if arch_id == "midas_v21_small_256":
        model, path = small_checkpoint
    else:
        path = tmp_path / "ck.pt"
        model = save_upstream(ARCHITECTURES[arch_id], path)
    loaded = load_network(path)  # the architecture is detected from the file alone
    assert loaded.arch.id == arch_id
    original = outputs(model, size)
    assert original.shape == (1, size, size) and original.std() > 0
    assert torch.equal(original, outputs(loaded, size))


TINY_VIT = {"embed_dim": 64, "depth": 4, "num_heads": 2}


@pytest.mark.parametrize("arch_id,taps,channels", [
    ("dpt_large_384", (0, 1, 2, 3), (16, 32, 64, 64)),
    ("dpt_hybrid_384", (2, 3), (256, 512, 64, 64)),
    ("dpt_beit_large_512", (0, 1, 2, 3), (16, 32, 64, 64)),
])
def test_shrunken_large_family_round_trip(arch_id, taps, channels, tmp_path):
    """Same wiring and key layout as the large MiDaS networks, at a size that runs in a second
    (Depth Anything's family runs full size above, as ViT-S)."""
    full = ARCHITECTURES[arch_id]
    size = 2 * full.multiple
    arch = dataclasses.replace(full, taps=taps, channels=channels, widths=(32,) * 4, native_size=size,
                               backbone_kwargs={**full.backbone_kwargs, **TINY_VIT, "img_size": size})
    model = save_upstream(arch, tmp_path / "ck.pt")
    loaded = network_from_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True), arch)
    original = outputs(model, size)
    assert original.shape == (1, size, size) and torch.equal(original, outputs(loaded, size))


def test_unreadable_odd_or_code_carrying_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder.pt").mkdir()
    os.mkfifo(tmp_path / "fifo.pt")   # reading it would block forever
    torch.save({"weights": fractions.Fraction(1, 3)}, tmp_path / "code.pt")
    reasons = {"junk": "not a readable checkpoint", "empty": "not a readable checkpoint", "folder": "is a folder",
               "fifo": "not a regular file", "absent": "no checkpoint at",
               "code": "pickled Python objects other than tensors; they were not run"}
    for name, reason in reasons.items():
        with pytest.raises(CheckpointError, match=reason) as caught:
            load_network(tmp_path / f"{name}.pt")
        assert "weights_only" not in str(caught.value)   # never advise loading an untrusted file unsafely


def test_install_then_find_by_name_architecture_or_path(small_checkpoint, tmp_path):
    source = small_checkpoint[1]
    target = install_checkpoint(source, tmp_path)
    assert target == tmp_path / "depth" / "midas_v21_small_256.pt" and target.stat().st_size > 1e6
    assert installed(tmp_path) == {"midas_v21_small_256": "midas_v21_small_256"}
    assert find_checkpoint("midas_v21_small_256", tmp_path) == target
    assert find_checkpoint("midas_v21_small_256.pth", tmp_path) == target
    assert find_checkpoint(str(source), tmp_path) == source
    with pytest.raises(FileExistsError):
        install_checkpoint(source, tmp_path)
    with pytest.raises(CheckpointError, match=r"installed in .*: midas_v21_small_256 \(midas.*install one with"):
        find_checkpoint("depth_anything_v2_vits", tmp_path)


def test_broken_checkpoint_is_not_installed(small_checkpoint, tmp_path):
    upstream = torch.load(small_checkpoint[1], weights_only=True)
    del upstream["scratch.output_conv.4.bias"]
    torch.save(upstream, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="1 missing: scratch.output_conv.4.bias"):
        install_checkpoint(tmp_path / "broken.pt", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_estimator_predicts_on_the_crop_grid(small_checkpoint, tmp_path, monkeypatch, astronaut_rgb):
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path))
    install_checkpoint(small_checkpoint[1])
    estimator = DepthEstimator(DepthConfig(checkpoint="midas_v21_small_256", input_size=128))
    crop = np.ascontiguousarray(astronaut_rgb[20:276, 120:376])
    inverse = estimator.predict(crop)
    assert inverse.shape == (256, 256) and inverse.dtype == np.float32
    assert np.isfinite(inverse).all() and inverse.std() > 0  # bicubic to the crop, as upstream: may dip below 0
    assert estimator.info()["input_size"] == [128, 128]
    shape, _, mask = face_like_surface(128)  # prior on a coarser grid than the crop, as in the pipeline
    fused, alignment = estimator.fused_depth(crop, shape, mask)
    assert fused.shape == (128, 128) and np.isfinite(fused).all()
    assert np.array_equal(fused[~mask], shape[~mask])
    assert np.array_equal(estimator.fused_depth(crop, shape, mask, weight=0.0)[0], shape)
    with pytest.raises(ValueError, match="RGB uint8"):
        estimator.predict(crop.astype(np.float32))


def test_network_input_sizes_follow_each_network():
    """Each network's own upstream rule (the full comparison with upstream is test_depth_upstream.py)."""
    da, beit = ARCHITECTURES["depth_anything_v2_vits"], ARCHITECTURES["dpt_beit_large_512"]
    assert network_input_size(da, 512, 512) == (518, 518)
    assert network_input_size(da, 300, 600, 140) == (140, 280)
    assert network_input_size(da, 1000, 700) == (742, 518)  # lower bound: the short side reaches 518
    assert network_input_size(ARCHITECTURES["dpt_large_384"], 512, 400, 100) == (128, 96)
    assert network_input_size(ARCHITECTURES["midas_v21_small_256"], 1000, 700) == (256, 192)  # upper bound
    assert network_input_size(beit, 512, 512) == (512, 512)
    assert network_input_size(beit, 384, 640) == (320, 512)  # minimal: the scale nearest 1; any BEiT window


# ---- fusion on known surfaces ------------------------------------------------------------------

def face_like_surface(n: int = 256):
    """(shape, detail, mask), heights in metres: an ellipsoidal cap with a nose; brow ridges and ripples."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    u, v = (x - n / 2) / (0.36 * n), (y - n / 2) / (0.46 * n)
    mask = u * u + v * v < 1
    cap = 0.06 * np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
    nose = 0.03 * np.exp(-((u / 0.12) ** 2 + ((v - 0.05) / 0.3) ** 2))
    brows = 0.004 * np.exp(-(((v + 0.3) / 0.04) ** 2)) * (np.abs(u) < 0.6)
    ripples = 0.0015 * np.sin(x / 3.0) * np.sin(y / 4.0)
    return ((cap + nose) * mask).astype(np.float32), ((brows + ripples) * mask).astype(np.float32), mask


def synthetic_network(height, distance, rng, noise=0.01, outliers=0.1):
    """a / z + b with 1 % noise (of the signal's spread) and a fraction of wild pixels."""
    inverse = 1.0 / (distance - height) if math.isfinite(distance) else height.astype(np.float64)
    out = 3.7 * inverse + 11.0
    out = out + rng.normal(0, noise * out.std(), out.shape)
    wild = rng.random(out.shape) < outliers
    out[wild] = rng.uniform(out.min(), out.max(), wild.sum())
    return out.astype(np.float32), wild


@pytest.mark.parametrize("distance", [0.4, 1.0, math.inf])
def test_alignment_recovers_true_heights(distance):
    shape, detail, mask = face_like_surface()
    truth = shape + detail
    network, wild = synthetic_network(truth, distance, np.random.default_rng(0))
    aligned, alignment = align_to_prior(network, truth, mask, distance)
    good = mask & ~wild
    rms = float(np.sqrt(np.mean((aligned[good] - truth[good]) ** 2)))
    assert alignment.usable and 0.8 < alignment.inliers < 0.95
    assert rms < 0.0012, rms  # 1 % noise on a ~9 cm relief: ~1 mm; the 10 % wild pixels do not tilt the fit


def test_fusion_keeps_the_prior_shape_and_takes_the_network_detail():
    """Fused = the prior below the split + the truth above it, to within the network's noise."""
    prior, detail, mask = face_like_surface()  # the prior: the right shape, without brows or ripples
    truth = prior + detail
    network, _ = synthetic_network(truth, 1.0, np.random.default_rng(1), noise=0.002, outliers=0.0)
    config = FuseConfig(weight=1.0, camera_distance=1.0)
    fused, alignment = fuse_depth(network, prior, mask, config)
    ideal = prior + detail - masked_blur(detail, mask, config.lowpass_fraction * face_width(mask))
    core = cv2.erode(mask.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)  # past the border feather

    def rms(a, b=truth):
        return float(np.sqrt(np.mean((a[core] - b[core]) ** 2)))

    assert alignment.usable
    assert rms(fused, ideal) < 0.0001, rms(fused, ideal)  # measured 0.045 mm
    assert rms(fused) < 0.5 * rms(prior), (rms(fused), rms(prior))
    assert np.array_equal(fused[~mask], prior[~mask])
    wrong_distance, _ = fuse_depth(network, prior, mask, dataclasses.replace(config, camera_distance=math.inf))
    assert np.abs(wrong_distance - fused)[mask].max() < 0.001  # measured 0.87 mm: the fit absorbs most of it
    unchanged, _ = fuse_depth(network, prior, mask, FuseConfig(weight=0.0))
    assert np.array_equal(unchanged, prior)
    half, _ = fuse_depth(network, prior, mask, dataclasses.replace(config, weight=0.5))
    assert rms(fused) < rms(half) < rms(prior)
    # Per-pixel trust (the cues network's confidence): none keeps the prior there, full changes nothing.
    trust = np.ones_like(prior)
    trust[:, : prior.shape[1] // 2] = 0.0
    trusted, _ = fuse_depth(network, prior, mask, config, trust)
    assert np.allclose(trusted[:, : prior.shape[1] // 2], prior[:, : prior.shape[1] // 2])
    assert np.allclose(trusted[:, prior.shape[1] // 2:], fused[:, prior.shape[1] // 2:])


def test_network_that_disagrees_with_the_prior_is_not_used():
    shape, detail, mask = face_like_surface()
    truth = shape + detail
    fused, alignment = fuse_depth(-truth, truth, mask)  # nearer = smaller: wrong sign
    assert not alignment.usable and np.array_equal(fused, truth)
    with pytest.raises(ValueError, match="share a grid"):
        fuse_depth(truth[:10], truth, mask)
    with pytest.raises(ValueError, match="outside"):
        FuseConfig(weight=1.5)
    with pytest.raises(ValueError, match="not in front of a camera"):
        fuse_depth(truth, truth, mask, FuseConfig(camera_distance=0.05))


@pytest.mark.parametrize("damage, said", [
    (lambda t: t.fill_(float("nan")), "1 holding NaN or infinite values: scratch.output_conv.4.weight"),
    (lambda t: t.view(-1)[:1].fill_(float("inf")), "1 holding NaN or infinite values: scratch.output_conv.4.weight"),
    (lambda t: t.bool(), "1 of the wrong kind: scratch.output_conv.4.weight torch.bool"),
    (lambda t: t.to(torch.int32), "1 of the wrong kind: scratch.output_conv.4.weight torch.int32")])
def test_weights_of_the_wrong_kind_or_not_finite_are_refused_at_install_and_load(small_checkpoint, tmp_path,
                                                                                damage, said):
    """The former check looked at names and shapes only: NaN, inf or bool weights installed, then every
    request answered ``internal``."""
    upstream = torch.load(small_checkpoint[1], weights_only=True)
    key = "scratch.output_conv.4.weight"
    upstream[key] = damage(upstream[key].clone())
    torch.save(upstream, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as installing:
        install_checkpoint(tmp_path / "broken.pt", tmp_path / "data")
    assert said in str(installing.value) and not (tmp_path / "data").exists()
    with pytest.raises(CheckpointError) as loading:  # a file put in place by hand is refused when it loads
        load_network(tmp_path / "broken.pt")
    assert said in str(loading.value)
