"""Are several photos one person? The joint fit's verdict, read off the cues network's dense cues.

One identity fitted to photos of two people is a compromise that fits each photo worse than that
photo's own fit. The 478 landmarks hardly notice (a joint fit of two rendered people raised their
landmark error by 21-25 %, of one person by 10-17 %, up to 34 %: no threshold separates them). The
network's ~1,500 correspondences per photo notice more: ``rise`` is how much the joint head moves
them off the photo (median pixel distance) against the photo's own head. Measured on renders of
ICT-FaceKit identities (``benchmarks/same_person_eval.py``), see ``RISE_LIMIT``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from addon.wire.errors import ErrorCode, ProtocolError

# Photos one of whose cue residuals rises by more than this in the joint fit are not one person.
# Measured in benchmarks/same_person_eval.py (figures in the README).
RISE_LIMIT = 1.13


def cue_residual_px(fit, cues) -> float:
    """Median distance (photo pixels) between where ``fit``'s head puts the cues' vertices and where
    the network saw them."""
    seen = fit.posed_vertices[cues.vertex].astype(np.float64)
    projected = fit.focal * seen[:, :2] / seen[:, 2:3] + np.asarray(fit.principal)
    return float(np.median(np.linalg.norm(projected - cues.points_px, axis=1)))


def residual_rises(own_fits: list, joint_fits: list, cues: list) -> list[float]:
    """Per photo: its cue residual under the joint head over that under its own head."""
    return [cue_residual_px(joint, cue) / max(cue_residual_px(own, cue), 1e-6)
            for own, joint, cue in zip(own_fits, joint_fits, cues)]


class NotOnePerson(ProtocolError):
    """Photos that do not show one person: ``photo`` (index among those fitted) looks like someone else."""

    def __init__(self, photo: int, rise: float):
        super().__init__(ErrorCode.BAD_IMAGE, "it does not show the same person as the other photos: one head for "
                         f"all of them fits the cues network's view of a photo up to {100 * (rise - 1):.0f} % worse "
                         f"than that photo's own head (the limit is {100 * (RISE_LIMIT - 1):.0f} %); send photos of "
                         "one person, or shape_cues 'landmarks' to fit them without this check")
        self.photo = photo


def check_one_person(own_fits: list, joint_fits: list, cues: list, fit_together: Callable[[list[int]], list]) -> list[float]:
    """Each photo's rise, or NotOnePerson naming the odd photo: with two photos the second (the
    first sets the pose), with more the one without which the others agree best (``fit_together``
    fits the photos of the given indices jointly; run only when the check fails)."""
    rises = residual_rises(own_fits, joint_fits, cues)
    if max(rises) <= RISE_LIMIT:
        return rises
    count = len(own_fits)

    def worst_without(left_out: int) -> float:
        rest = [i for i in range(count) if i != left_out]
        return max(residual_rises([own_fits[i] for i in rest], fit_together(rest), [cues[i] for i in rest]))

    raise NotOnePerson(1 if count == 2 else min(range(count), key=worst_without), max(rises))
