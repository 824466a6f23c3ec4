"""Several photos, one person? How often the joint fit's check (``head.same_person``) refuses.

    .venv/bin/python benchmarks/same_person_eval.py [--subjects 8] [--renderer raster|cycles] [--first-seed 3000]

Subjects as in ``head_fit_eval.py`` (``model`` and ``beyond`` kinds), each rendered at 0, 35 and 70
degrees of yaw, run through the real landmark chain and the shipped cues network. Sets of photos:
one person (0/35, 0/70, 35/70 and all three) and two people (a subject with another one, at
0/35 and 0/70 and in a triple where one of three photos is someone else), plus real photos: the
astronaut and Grace Hopper, each with a relit and a half-size copy of her photo, together and apart.
Printed: each set's worst per-photo cue residual rise (``same_person.residual_rises``) and how far
its photos' regressed faces lie apart (``identities_apart_mm``), how many sets of one person are
refused (false alarms) and of two people accepted (misses) at ``rise_limit`` and ``APART_LIMIT_MM``,
and in refused triples whether the check names the intruder.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import (CAMERA_SIZE, LandmarkReader, cycles_renders, evaluation_model,  # noqa: E402
                                      make_subject, render_subject)

YAWS = (0.0, 35.0, 70.0)


def photo_sets(count: int) -> list[tuple[str, list]]:
    """(label, photo keys): one person's sets and two people's, keys (person, view)."""
    people = [f"{kind}{n}" for n in range(count) for kind in ("model", "beyond")]
    sets = []
    for index, person in enumerate(people):
        # The same seed's model and beyond subjects share their coefficients: "another" is another seed.
        other = people[(index + 3) % len(people)]
        sets += [("one", [(person, 0.0), (person, 35.0)]), ("one", [(person, 0.0), (person, 70.0)]),
                 ("one", [(person, 35.0), (person, 70.0)]), ("one", [(person, y) for y in YAWS]),
                 ("two", [(person, 0.0), (other, 35.0)]), ("two", [(person, 0.0), (other, 70.0)]),
                 ("two", [(person, 0.0), (person, 35.0), (other, 70.0)])]
    real = [("astronaut", "original"), ("astronaut", "side_light"), ("astronaut", "half"),
            ("grace_hopper", "original"), ("grace_hopper", "side_light"), ("grace_hopper", "half")]
    sets += [("one", [real[0], real[1]]), ("one", [real[0], real[2]]), ("one", [real[3], real[4]]),
             ("one", [real[3], real[5]]), ("two", [real[0], real[3]]), ("two", [real[2], real[4]]),
             ("two", [real[0], real[1], real[3]])]
    return sets


def observe(model, reader, predictor, subjects: int, first_seed: int, renderer: str) -> dict:
    """(person, view) -> (landmarks, image size, cues) for every render and real photo."""
    from benchmarks.likeness_real import photos, variants

    chosen = [(f"{kind}{n}", yaw, replace(make_subject(model, first_seed + n, kind == "beyond"), pose=(yaw, 4.0, -3.0)))
              for n in range(subjects) for kind in ("model", "beyond") for yaw in YAWS]
    subjects_only = [subject for *_, subject in chosen]
    images = cycles_renders(model, subjects_only) if renderer == "cycles" else [render_subject(model, s) for s in subjects_only]
    found = {}
    for (person, yaw, _), rgb in zip(chosen, images):
        try:
            landmarks = reader(rgb)
        except RuntimeError:
            continue            # no face found at this yaw: sets with this photo are left out
        found[(person, yaw)] = (landmarks, CAMERA_SIZE, predictor(rgb, landmarks))
    for person, rgb in photos().items():
        for name, image in variants(rgb).items():
            if name in ("original", "side_light", "half"):
                landmarks = reader(image)
                found[(person, name)] = (landmarks, image.shape[:2], predictor(image, landmarks))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=3000)
    parser.add_argument("--renderer", choices=("raster", "cycles"), default="raster")
    args = parser.parse_args()
    import torch

    from inference_server.cues import checkpoint
    from inference_server.cues.predict import CuesPredictor
    from inference_server.head.basis import ShapeBasis
    from inference_server.head.fit import View, fit_views
    from inference_server.head.same_person import (APART_LIMIT_MM, APART_MAX_YAW_DEG, RISE_LIMIT, RISE_LIMIT_TURNED,
                                                   NotOnePerson, check_one_person, identities_apart_mm,
                                                   residual_rises, rise_limit)

    model, table = evaluation_model()
    basis = ShapeBasis(model, table, torch.device("cpu"))
    found = observe(model, LandmarkReader(), CuesPredictor.load(checkpoint.SHIPPED, model), args.subjects,
                    args.first_seed, args.renderer)
    views = {key: View(landmarks, size, cues=cues) for key, (landmarks, size, cues) in found.items()}
    own = {key: fit_views(model, [view], basis=basis)[0] for key, view in views.items()}
    worst, spread, limits, named = {"one": [], "two": []}, {"one": [], "two": []}, {"one": [], "two": []}, []
    for label, keys in photo_sets(args.subjects):
        if any(key not in views for key in keys):
            continue

        def together(indices, keys=keys):
            return fit_views(model, [views[keys[i]] for i in indices], basis=basis)

        own_fits, cues = [own[key] for key in keys], [views[key].cues for key in keys]
        joint = together(range(len(keys)))
        rise = max(residual_rises(own_fits, joint, cues))
        apart = identities_apart_mm(model, [cue.identity for cue in cues], [fit.yaw_deg for fit in own_fits])
        worst[label].append(rise)
        limits[label].append(rise_limit([fit.yaw_deg for fit in own_fits]))
        spread[label].append(float(np.nanmax(apart, initial=0.0)))
        text = f"{label}  {' + '.join(f'{p}/{v:g}' if isinstance(v, float) else f'{p}/{v}' for p, v in keys):60}"
        if label == "two" and len(keys) > 2:
            try:
                check_one_person(own_fits, joint, cues, together, apart)
            except NotOnePerson as odd:
                named.append(odd.photo == len(keys) - 1)     # the intruder is the last photo
                text += f" named photo {odd.photo + 1}"
        print(f"{text} worst rise {rise:.3f} (limit {limits[label][-1]:g}), apart {spread[label][-1]:.2f} mm (faces "
              f"within {APART_MAX_YAW_DEG:g} deg)", flush=True)
    one, two = np.array(worst["one"]), np.array(worst["two"])
    one_risen, two_risen = one > np.array(limits["one"]), two > np.array(limits["two"])
    one_apart, two_apart = np.array(spread["one"]), np.array(spread["two"])
    refused_one = one_risen | (one_apart > APART_LIMIT_MM)
    refused_two = two_risen | (two_apart > APART_LIMIT_MM)
    print(f"\nper set ({args.renderer} renders + real photos): worst cue residual rise (limit {RISE_LIMIT}, "
          f"{RISE_LIMIT_TURNED} with a face beyond {APART_MAX_YAW_DEG:g} deg) and regressed faces apart (limit "
          f"{APART_LIMIT_MM} mm)")
    print(f"one person : {len(one)} sets, rise median {np.median(one):.3f}, max {one.max():.3f}; apart median "
          f"{np.median(one_apart):.2f}, max {one_apart.max():.2f} mm; refused {int(one_risen.sum())} by the "
          f"rise, {int((one_apart > APART_LIMIT_MM).sum())} by the identities, {int(refused_one.sum())} in all (false alarms)")
    print(f"two people : {len(two)} sets, rise median {np.median(two):.3f}; apart median {np.median(two_apart):.2f} mm, "
          f"min {two_apart.min():.2f}; refused {int(two_risen.sum())} by the rise, "
          f"{int((two_apart > APART_LIMIT_MM).sum())} by the identities, {int(refused_two.sum())} in all; "
          f"accepted {int((~refused_two).sum())} (misses)")
    print(f"three photos, one of someone else, refused: the intruder named in {sum(named)} of {len(named)}")


if __name__ == "__main__":
    main()
