"""Are several photos one person? Two verdicts of the cues network, either of which refuses.

One identity fitted to photos of two people is a compromise that fits each photo worse than that
photo's own fit. The 478 landmarks hardly notice (a joint fit of two rendered people raised their
landmark error by 21-25 %, of one person by 10-17 %, up to 34 %: no threshold separates them). The
network's ~1,500 correspondences per photo notice more: ``rise`` is how much the joint head moves
them off the photo (median pixel distance) against the photo's own head. And the network regresses
each photo's identity coefficients: ``apart`` is how far two photos' regressed faces lie apart (RMS
over the face region, millimetres). Measured on renders of ICT-FaceKit identities and the real
photos (``benchmarks/same_person_eval.py``), see ``RISE_LIMIT`` and ``APART_LIMIT_MM``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from addon.wire.errors import ErrorCode, ProtocolError

# Photos one of whose cue residuals rises by more than this in the joint fit are not one person: the
# first limit where every face is turned less than APART_MAX_YAW_DEG, the second where one is turned
# more (a face at 70 deg fits another view's head less well even when it is the same person).
# Measured in benchmarks/same_person_eval.py (figures in the README): one person rose to at most
# 1.06 / 1.08 within 50 deg and 1.17 / 1.20 beyond (our renders / Cycles renders); two people had a
# median of 1.10 / 1.10.
RISE_LIMIT = 1.10
RISE_LIMIT_TURNED = 1.25
# Photos two of whose regressed faces lie farther apart than this are not one person, compared only
# where both faces are turned less than APART_MAX_YAW_DEG: the regression reads a turned face less
# well (one person at 0 and 70 deg lay up to 4.0 mm apart on our renders, 7.4 on Cycles renders).
# Within 35 deg one person lay at most 1.8 mm apart (both renderers), two people 3.9 mm (median); the
# real photos' harmless edits 0.1-0.8 mm, the astronaut and Grace Hopper 6.4.
APART_LIMIT_MM = 4.0
APART_MAX_YAW_DEG = 50.0


@lru_cache(maxsize=4)  # per model (identity-hashed)
def _face_gram(model) -> np.ndarray:
    """(I, I) Gram matrix of the identity basis over the face region, per vertex: d' G d is the mean
    squared vertex distance (m^2) between the faces of two coefficient vectors differing by d."""
    basis = np.asarray(model.id_deltas, np.float64)[:, model.face_mask].reshape(len(model.id_deltas), -1)
    return basis @ basis.T / int(model.face_mask.sum())


def identities_apart_mm(model, identities: list[np.ndarray], yaws_deg: list[float]) -> np.ndarray:
    """(N, N) RMS distance (mm) between the face regions of N regressed identities; NaN for a pair
    with a face turned more than ``APART_MAX_YAW_DEG`` (not compared)."""
    gram = _face_gram(model)
    stacked = np.stack([np.asarray(identity, np.float64) for identity in identities])
    difference = stacked[:, None] - stacked[None]
    apart = 1000 * np.sqrt(np.maximum(np.einsum("abi,ij,abj->ab", difference, gram, difference), 0.0))
    frontal = np.abs(np.asarray(yaws_deg, np.float64)) <= APART_MAX_YAW_DEG
    return np.where(frontal[:, None] & frontal[None], apart, np.nan)


def farthest_apart_mm(apart: np.ndarray) -> list[float | None]:
    """Per photo, its regressed face's distance to the farthest other compared one (None: none compared)."""
    others = apart.copy()
    np.fill_diagonal(others, np.nan)
    return [None if np.isnan(row).all() else round(float(np.nanmax(row)), 3) for row in others]


def cue_residual_px(fit, cues) -> float:
    """Median distance (photo pixels) between where ``fit``'s head puts the cues' vertices and where
    the network saw them."""
    seen = fit.posed_vertices[cues.vertex].astype(np.float64)
    projected = fit.focal * seen[:, :2] / seen[:, 2:3] + np.asarray(fit.principal)
    return float(np.median(np.linalg.norm(projected - cues.points_px, axis=1)))


def rise_limit(yaws_deg: list[float]) -> float:
    """The rise above which photos at these yaws are not one person."""
    return RISE_LIMIT_TURNED if max(abs(yaw) for yaw in yaws_deg) > APART_MAX_YAW_DEG else RISE_LIMIT


def residual_rises(own_fits: list, joint_fits: list, cues: list) -> list[float]:
    """Per photo: its cue residual under the joint head over that under its own head."""
    return [cue_residual_px(joint, cue) / max(cue_residual_px(own, cue), 1e-6)
            for own, joint, cue in zip(own_fits, joint_fits, cues)]


class NotOnePerson(ProtocolError):
    """Photos that do not show one person: ``photo`` (index among those fitted) looks like someone else."""

    def __init__(self, photo: int, why: str):
        super().__init__(ErrorCode.BAD_IMAGE, f"it does not show the same person as the other photos: {why}; send "
                         "photos of one person, or shape_cues 'landmarks' to fit them without this check")
        self.photo = photo


def check_one_person(own_fits: list, joint_fits: list, cues: list, fit_together: Callable[[list[int]], list],
                     apart: np.ndarray) -> list[float]:
    """Each photo's rise, or NotOnePerson naming the odd photo. ``apart``: ``identities_apart_mm`` of
    the photos' regressed identities (NaN: not compared). With two photos the second is named (the
    first sets the pose); with more, the one without which the others agree best (``fit_together``
    fits the photos of the given indices jointly; run only when the rise check fails)."""
    rises = residual_rises(own_fits, joint_fits, cues)
    count, limit = len(own_fits), rise_limit([fit.yaw_deg for fit in own_fits])

    def odd_one(spread: Callable[[list[int]], float]) -> int:
        """The photo to name: the second of two, else the one whose leaving out leaves the least spread."""
        if count == 2:
            return 1
        return min(range(count), key=lambda out: spread([i for i in range(count) if i != out]))

    if max(rises) > limit:
        raise NotOnePerson(odd_one(lambda rest: max(residual_rises([own_fits[i] for i in rest], fit_together(rest),
                                                                   [cues[i] for i in rest]))),
                           f"one head for all of them fits the cues network's view of a photo up to "
                           f"{100 * (max(rises) - 1):.0f} % worse than that photo's own head (the limit is "
                           f"{100 * (limit - 1):.0f} %)")
    widest = np.nanmax(apart, initial=0.0)
    if widest > APART_LIMIT_MM:
        raise NotOnePerson(odd_one(lambda rest: float(np.nanmax(apart[np.ix_(rest, rest)], initial=0.0))),
                           f"the cues network reads faces {widest:.1f} mm apart from them (the limit is "
                           f"{APART_LIMIT_MM:.0f} mm)")
    return rises
