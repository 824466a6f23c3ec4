"""Learned depth computes what the published networks compute, on square and non-square inputs.

The expected values were made by the upstream code itself (isl-org/MiDaS with timm 0.6.13,
DepthAnything/Depth-Anything-V2) with weights and inputs both sides rebuild from names and seeds;
see ``make_depth_upstream_fixture.py``. Every architecture runs at full size: the token paths
(position resampling per upstream rule, BEiT's relative-position bias for any window, the hybrid's
ResNet levels), the decoder and head, the input transform and the output resize.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference_server.depth import ARCHITECTURES, build_network, network_from_state_dict, to_upstream
from inference_server.depth.estimator import network_input_size, preprocess, to_image_size

from .depth_upstream import (FIXTURE, NETWORK_INPUTS, OUTPUT_RESIZES, OUTPUT_STRIDE, PHOTO_SHAPES,
                             PIXEL_ARCHITECTURES, PIXEL_STRIDE, RESIZE_STRIDE, network_input, network_output_grid,
                             photo, published_weights, summary)

torch.set_num_threads(2)
TOLERANCE = 5e-4  # fp32 on the CPU, whose kernels differ by instruction set (1.4e-4 seen); defects were 2e-3 .. 0.19


@pytest.fixture(scope="module")
def upstream():
    with np.load(FIXTURE) as stored:
        return dict(stored)


def test_every_supported_architecture_is_covered():
    assert set(NETWORK_INPUTS) == set(ARCHITECTURES)
    assert any(rows != cols for arch in NETWORK_INPUTS.values() for rows, cols in arch)


@pytest.mark.parametrize("arch_id", list(NETWORK_INPUTS))
def test_network_output_equals_upstream(arch_id, upstream):
    arch = ARCHITECTURES[arch_id]
    salt = int(upstream[f"salt/{arch_id}"])
    weights = published_weights(to_upstream(build_network(arch, "meta").state_dict(), arch), salt)
    network = network_from_state_dict(weights, arch)
    for shape in NETWORK_INPUTS[arch_id]:
        with torch.inference_mode():
            ours = network(network_input(arch_id, shape))[0].numpy()
        assert ours.shape == shape
        expected = upstream[f"net/{arch_id}/{shape[0]}x{shape[1]}"]
        np.testing.assert_allclose(summary(ours, OUTPUT_STRIDE), expected, rtol=0, atol=TOLERANCE,
                                   err_msg=f"{arch_id} at {shape}")


@pytest.mark.parametrize("arch_id", list(NETWORK_INPUTS))
def test_input_size_and_pixels_equal_upstream_transform(arch_id, upstream):
    arch = ARCHITECTURES[arch_id]
    for requested in (0, 140 if arch_id.startswith("depth_anything") else 128):
        for shape in PHOTO_SHAPES:
            name = f"{arch_id}/{requested}/{shape[0]}x{shape[1]}"
            size = network_input_size(arch, *shape, requested)
            assert size == tuple(upstream[f"size/{name}"]), name
            if arch_id in PIXEL_ARCHITECTURES and not requested:
                tensor = preprocess(photo(shape), arch, size)[0].numpy()
                np.testing.assert_allclose(summary(tensor, PIXEL_STRIDE), upstream[f"pixels/{name}"],
                                           rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("family,arch_id", [("midas", "dpt_hybrid_384"), ("midas", "midas_v21_small_256"),
                                            ("depth_anything", "depth_anything_v2_vitb")])
def test_output_resize_equals_upstream(family, arch_id, upstream):
    for grid, target in OUTPUT_RESIZES:
        resized = to_image_size(torch.from_numpy(network_output_grid(grid))[None], ARCHITECTURES[arch_id], target)
        assert resized.shape == (1, *target)
        expected = upstream[f"resize/{family}/{grid[0]}x{grid[1]}"]
        np.testing.assert_allclose(summary(resized[0].numpy(), RESIZE_STRIDE), expected, rtol=0, atol=1e-6)
