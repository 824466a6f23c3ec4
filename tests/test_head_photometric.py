"""Photometric refinement on photos with known answers (``photometric_scenes``): the model head
with a known skin texture, SH lighting and a smooth displacement of a few mm the model cannot carry,
rendered by the SH renderer; refinement starts from the head without the displacement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference_server.head import sh as spherical
from inference_server.head.model import HeadModel
from inference_server.head.photometric import lit_texture, refine_head
from inference_server.head.shading import srgb_to_linear
from tests import ict_fixtures as ict
from tests import photometric_scenes as scenes

TEXTURE = 512


@pytest.fixture(scope="module")
def model() -> HeadModel:
    return HeadModel.load(ict.require_ict())


@pytest.fixture(scope="module")
def side_lit(model):
    return scenes.make_scene(model, texture_size=TEXTURE, ratio=30.0)


@pytest.fixture(scope="module")
def refined(model, side_lit):
    torch.set_num_threads(2)
    return {level: refine_head(model, side_lit.photo, side_lit.plain, side_lit.camera, level, texture_size=TEXTURE)
            for level in ("light", "full")}


def _front_hemisphere() -> np.ndarray:
    directions = spherical.fibonacci_sphere(2000)
    return directions[directions[:, 2] < 0]          # normals a camera can see (camera frame, z forward)


def test_sh_basis_reproduces_a_directional_light_and_rotates():
    sh = spherical.directional([0.0, 0.0, -1.0], (1.0, 0.5, 0.25), (0.1, 0.1, 0.1))
    np.testing.assert_allclose(spherical.irradiance(np.array([[0.0, 0.0, -1.0]]), sh)[0], [1.1, 0.6, 0.35], atol=1e-9)
    turn = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])   # -z becomes -x
    rotated = spherical.rotate(sh, turn)
    np.testing.assert_allclose(spherical.irradiance(np.array([[-1.0, 0.0, 0.0]]), rotated)[0], [1.1, 0.6, 0.35],
                               atol=1e-9)
    assert spherical.irradiance_error(rotated, sh) > 0.3


def test_side_lit_albedo_has_even_cheeks(model, side_lit, refined):
    photo_ratio = scenes.photo_cheek_ratio(model, side_lit)
    true_ratio = scenes.cheek_ratio(model, side_lit.albedo)
    assert photo_ratio > 20, f"the scene is not side-lit enough: cheeks differ {photo_ratio:.1f}x"
    assert true_ratio < 1.05
    for level, result in refined.items():
        ratio = scenes.cheek_ratio(model, srgb_to_linear(result.albedo_texture))
        print(f"{level}: photo cheeks {photo_ratio:.1f}x, albedo cheeks {ratio:.3f}x")
        assert ratio < 1.25, level


def test_recovered_lighting_matches_the_known_one(side_lit, refined):
    plain_light = spherical.directional([0.0, 0.0, -1.0], (1.0, 1.0, 1.0), (0.3, 0.3, 0.3))
    baseline = spherical.irradiance_error(plain_light, side_lit.sh, _front_hemisphere())
    for level, result in refined.items():
        error = spherical.irradiance_error(result.sh, side_lit.sh, _front_hemisphere())
        print(f"{level}: SH irradiance error (front hemisphere, relative RMS) {error:.3f}, frontal guess {baseline:.3f}")
        assert error < 0.25 and error < baseline / 2, level


def test_full_refinement_moves_the_surface_towards_the_truth(model, side_lit, refined):
    seen = np.nonzero(scenes.visible_face_vertices(model, side_lit.plain, side_lit.camera))[0]
    result = refined["full"]
    before = scenes.mean_distance_mm(side_lit.plain, side_lit.truth, seen)
    after = scenes.mean_distance_mm(scenes.displaced(model, side_lit.plain, result.displacement), side_lit.truth, seen)
    print(f"mean distance to the true surface: before {before:.2f} mm, after {after:.2f} mm; "
          f"residual {result.residual['before']:.4f} -> {result.residual['after']:.4f}")
    assert after < 0.85 * before
    assert result.residual["after"] < 0.85 * result.residual["before"]
    assert np.abs(result.displacement[~model.face_mask]).max() == 0.0
    assert np.abs(result.displacement).max() < 0.01


def test_light_level_keeps_the_shape(model, refined):
    result = refined["light"]
    assert not result.displacement.any()
    assert result.residual["after"] == result.residual["before"]


def test_textures_are_images_in_the_atlas(model, refined):
    for result in refined.values():
        for texture in (result.albedo_texture, lit_texture(model, result)):
            assert texture.shape == (TEXTURE, TEXTURE, 3) and texture.dtype == np.uint8
        assert result.sh.shape == (9, 3) and np.isfinite(result.sh).all()
        assert set(result.timings) >= {"view", "lighting", "albedo", "total"}


def test_progress_reports_phases_and_can_cancel(model, side_lit):
    seen = []
    refine_head(model, side_lit.photo, side_lit.plain, side_lit.camera, "light", texture_size=256,
                report=lambda text, fraction: seen.append((text, fraction)))
    fractions = [fraction for _, fraction in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len({text for text, _ in seen}) >= 3

    class Stop(Exception):
        pass

    def stop(text, fraction):
        raise Stop(text)

    with pytest.raises(Stop):
        refine_head(model, side_lit.photo, side_lit.plain, side_lit.camera, "full", report=stop)


@pytest.mark.parametrize("change, message", [
    ({"level": "off"}, "refine level"),
    ({"photo": np.zeros((8, 8), np.uint8)}, "photo must be"),
    ({"vertices": np.zeros((5, 3), np.float32)}, "posed_vertices must be"),
    ({"shift": -1.0}, "not in front of the camera"),
])
def test_bad_input_is_a_clear_error(model, side_lit, change, message):
    vertices = change.get("vertices", side_lit.plain + np.array([0, 0, change.get("shift", 0.0)], np.float32))
    with pytest.raises(ValueError, match=message):
        refine_head(model, change.get("photo", side_lit.photo), vertices, side_lit.camera, change.get("level", "light"))
