"""The expression-drift estimate of scripts/derive_expression_drift.py on offsets with a known answer."""
import numpy as np
import pytest

from scripts.derive_expression_drift import WEIGHTS, estimate_drift

NAMES = ["jawOpen", "browInnerUp_L", "browInnerUp_R"]
YAWS = [-20.0, 0.0, 20.0]


def offsets_with(drift_of, rng, noise_m=0.001, landmarks=4):
    """(identity, yaw, weight, expression, landmark, 3) offsets: each head's own neutral offset plus
    ``drift_of(e, l) * weight`` plus noise."""
    out = np.zeros((3, len(YAWS), len(WEIGHTS) + 1, len(NAMES), landmarks, 3))
    for i in range(3):
        for y in range(len(YAWS)):
            neutral = rng.normal(0, 0.003, (landmarks, 3))
            out[i, y, 0] = neutral
            for k, weight in enumerate(WEIGHTS):
                for e in range(len(NAMES)):
                    slide = np.array([drift_of(e, l) for l in range(landmarks)])
                    out[i, y, k + 1, e] = neutral + weight * slide + rng.normal(0, noise_m, (landmarks, 3))
    return out


def test_a_consistent_slide_is_found_and_noise_is_not():
    rng = np.random.default_rng(0)
    slide = np.array([0.0, -0.04, -0.02])
    offsets = offsets_with(lambda e, l: slide if (e, l) == (0, 1) else np.zeros(3), rng)
    drift = estimate_drift(offsets, YAWS, NAMES, np.arange(4), threshold=3.0)
    assert drift.shape == (4, len(NAMES), 3)
    assert np.allclose(drift[1, 0], slide, atol=0.002)
    others = np.ones((4, len(NAMES)), bool)
    others[1, 0] = False
    assert not drift[others].any(), "noise must not pass the significance test"


def test_mirrored_samples_swap_sides():
    """A slide of landmark 0 under the left expression is, through the mirror (landmarks 0 and 2 are
    partners), the same slide of landmark 2 under the right one with x flipped: both are found."""
    rng = np.random.default_rng(1)
    left, right = np.array([0.01, 0.02, 0.0]), np.array([-0.01, 0.02, 0.0])
    offsets = offsets_with(lambda e, l: left if (e, l) == (1, 0) else right if (e, l) == (2, 2) else np.zeros(3),
                           rng, noise_m=0.0005)
    drift = estimate_drift(offsets, YAWS, NAMES, np.array([2, 1, 0, 3]), threshold=3.0)
    assert np.allclose(drift[0, 1], left, atol=0.002) and np.allclose(drift[2, 2], right, atol=0.002)
    assert not drift[0, 2].any() and not drift[2, 1].any()


def test_yaws_without_their_mirror_are_refused():
    offsets = offsets_with(lambda e, l: np.zeros(3), np.random.default_rng(2))
    with pytest.raises(ValueError, match="symmetric"):
        estimate_drift(offsets, [0.0, 20.0, 30.0], NAMES, np.arange(4), threshold=3.0)
