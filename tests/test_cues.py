"""The cues network: deterministic training renders, a training run that learns, checkpoints that
round-trip and refuse damage, the fit with and without it, and its install. Needs the shared
ICT-FaceKit npz (test data only)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import head_fit_eval as evaluation
from inference_server.cues import checkpoint, dataset, train
from inference_server.cues.crop import INPUT_SIDE, OUTPUT_STRIDE, crop_transform
from inference_server.cues.detail_losses import Adversary
from inference_server.cues.network import build
from tests.ict_fixtures import require_ict

OUT_SIDE = INPUT_SIDE // OUTPUT_STRIDE


@pytest.fixture(scope="module")
def model():
    from inference_server.head.model import HeadModel

    return HeadModel.load(require_ict())


@pytest.fixture(scope="module")
def generator(model):
    from inference_server.cues.synth import Generator

    return Generator(model, seed=7)


def test_renders_are_reproducible_from_seed_and_index(generator, model):
    from inference_server.cues.synth import Generator

    first, again, other = generator(3), Generator(model, seed=7)(3), generator(4)
    for field in dataset.FIELDS:
        assert np.array_equal(getattr(first, field), getattr(again, field)), field
    assert not np.array_equal(first.image, other.image)
    assert first.image.shape == (INPUT_SIDE, INPUT_SIDE, 3) and first.image.dtype == np.uint8
    assert first.coords.shape == (OUT_SIDE, OUT_SIDE, 3) and first.mask.shape == (OUT_SIDE, OUT_SIDE)
    # The crop frames the face: the seen head covers a good part of it, and nothing outside the mask counts.
    assert 0.2 < first.mask.mean() < 0.95
    assert np.all(first.nearness[~first.mask] == 0) and np.all(first.coords[~first.mask] == 0)
    # Correspondences lie on the mean head (within its extent, in COORD_SCALE units).
    extent = np.abs(model.vertices).max(0) / 0.1
    assert np.all(np.abs(first.coords[first.mask]) <= extent + 1e-3)


def test_crop_is_a_similarity_centred_on_the_landmarks():
    rng = np.random.default_rng(0)
    points = rng.uniform(100, 300, (478, 2))
    transform = crop_transform(points)
    linear = transform[:, :2]
    assert np.allclose(linear @ linear.T, np.eye(2) * np.linalg.det(linear))   # rotation x scale
    moved = points[:468] @ linear.T + transform[:, 2]
    assert moved.min() > 0 and moved.max() < INPUT_SIDE


def test_a_short_training_run_lowers_its_loss(tmp_path, model):
    dataset.generate(require_ict(), tmp_path / "data", 24, seed=1, shard_size=8, report=lambda _: None)
    config = train.TrainConfig(steps=40, batch=4, lr=1e-3, warmup=5, snapshot_every=20, holdout_shards=1)
    shards, _ = dataset.Shards.in_folder(tmp_path / "data", holdout=1)
    batch = {k: torch.stack([shards[i][k] for i in range(8)]) for k in shards[0]}
    metric = train.identity_metric(model)

    def loss_of(network) -> float:
        with torch.no_grad():
            return float(sum(train.losses(*network(batch["image"]), batch, metric).values()))

    torch.manual_seed(config.seed)
    before = loss_of(build(config.variant).train())
    final = train.train(tmp_path / "data", tmp_path / "run", model, config, report=lambda _: None)
    trained = build(config.variant)
    trained.load_state_dict(checkpoint.read(tmp_path / "run" / "last.pt")["state_dict"])
    assert loss_of(trained.train()) < 0.8 * before
    # Shipping form: float16 weights that load back into an eval-mode network.
    shipped = checkpoint.load(final)
    assert not shipped.training and checkpoint.read(final)["provenance"]["train"]["steps"] == 40
    # Resuming a finished run trains no further step and keeps the weights.
    train.train(tmp_path / "data", tmp_path / "run", model, config, report=lambda line: pytest.fail(line)
                if line.startswith("step") else None)
    # Fine-tuning (--init) starts a fresh run from the trained weights, not from scratch ...
    tune = train.TrainConfig(steps=1, batch=4, lr=1e-9, warmup=1, holdout_shards=1, init=str(final))
    tuned = train.train(tmp_path / "data", tmp_path / "tune", model, tune, report=lambda _: None)
    assert loss_of(checkpoint.load(tuned).train()) == pytest.approx(loss_of(shipped.train()), rel=0.02)
    assert checkpoint.read(tuned)["provenance"]["init_provenance"]["train"]["steps"] == 40
    # ... and refuses weights of another variant.
    with pytest.raises(ValueError, match="not a cues-gpu network"):
        train.train(tmp_path / "data", tmp_path / "gpu", model, train.TrainConfig(variant="cues-gpu", init=str(final)),
                    report=lambda _: None)
    # The held-out report: the shipped network reads unseen renders far better than 40 steps of training.
    _, held_out = dataset.Shards.in_folder(tmp_path / "data", holdout=1)
    good, poor = (train.evaluate(network, held_out, model) for network in (checkpoint.load(checkpoint.SHIPPED), shipped))
    assert good["samples"] == 8 and good["mask_iou"] > 0.9 and good["identity_mm"] < good["identity_mean_head_mm"]
    for key in ("coords_mm", "nearness_px", "nearness_slope_px"):
        assert good[key] < 0.7 * poor[key], key


def test_detail_losses_and_low_resolution_train_resume_and_judge(tmp_path, model, generator):
    from inference_server.cues.detail_losses import gradient_l1, surface_maps

    # Gradient-L1 sees local shape, not offsets: a shifted nearness costs nothing, a bumpy one does.
    sample = generator(8)
    batch = {"nearness": torch.from_numpy(sample.nearness)[None].float(),
             "coords": torch.from_numpy(sample.coords).permute(2, 0, 1)[None].float(),
             "mask": torch.from_numpy(sample.mask)[None]}
    truth = surface_maps(None, batch)
    shifted = surface_maps(torch.cat([truth[:, :1] + 3.0, truth[:, 1:]], 1), batch)
    assert float(gradient_l1(shifted, truth, batch["mask"])) < 1e-5
    bumpy = truth + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    assert float(gradient_l1(bumpy, truth, batch["mask"])) > 0.01
    # Low resolution blurs only the chosen images.
    images = torch.stack([torch.from_numpy(generator(i).image).permute(2, 0, 1) for i in (8, 9)])
    blurred = train.low_resolution(images, torch.tensor([True, False]), torch.Generator().manual_seed(0))
    assert torch.equal(blurred[1], images[1])

    def detail(x):
        return float(torch.diff(x.float(), dim=-1).abs().mean())
    assert detail(blurred[0]) < 0.9 * detail(images[0])
    # A run with every option: the discriminator trains, is kept in the snapshot, and learns to tell.
    dataset.generate(require_ict(), tmp_path / "data", 24, seed=1, shard_size=8, report=lambda _: None)
    config = train.TrainConfig(steps=30, batch=4, lr=1e-3, warmup=5, snapshot_every=30, holdout_shards=1,
                               low_resolution=0.5, gradient_l1=1.0, adversarial=0.1)
    lines = []
    train.train(tmp_path / "data", tmp_path / "run", model, config, report=lines.append)
    assert all(term in lines[-1] for term in ("gradient", "adversarial", "discriminator")), lines[-1]
    state = checkpoint.read(tmp_path / "run" / "last.pt")["adversary"]
    adversary = Adversary(torch.device("cpu"), state)
    network = build(config.variant)
    network.load_state_dict(checkpoint.read(tmp_path / "run" / "last.pt")["state_dict"])
    shards, _ = dataset.Shards.in_folder(tmp_path / "data", holdout=1)
    held = {k: torch.stack([shards[i][k] for i in range(8)]) for k in shards[0]}
    with torch.no_grad():
        fake = surface_maps(network.eval()(held["image"])[0], held)
        real_score = float(adversary.network(held["image"], surface_maps(None, held)).mean())
        fake_score = float(adversary.network(held["image"], fake).mean())
    assert real_score > fake_score
    # Resuming restores the discriminator: a finished run takes no step.
    train.train(tmp_path / "data", tmp_path / "run", model, config, report=lambda line: pytest.fail(line)
                if line.startswith("step") else None)


def test_mirror_augmentation_flips_the_photo_and_mirrors_its_truth(generator, model):
    from inference_server.head.symmetry import FLIP_X, identity_mirror, mirror_of

    sample = generator(5)
    batch = {"image": torch.from_numpy(sample.image).permute(2, 0, 1)[None],
             "nearness": torch.from_numpy(sample.nearness)[None].float(),
             "coords": torch.from_numpy(sample.coords).permute(2, 0, 1)[None].float(),
             "mask": torch.from_numpy(sample.mask)[None], "id_coeffs": torch.from_numpy(sample.id_coeffs)[None]}
    flip = torch.from_numpy(identity_mirror(model))
    kept, flipped = (train.mirrored(batch, torch.tensor([chosen]), flip) for chosen in (False, True))
    assert all(torch.equal(kept[k], batch[k]) for k in batch)
    assert torch.equal(flipped["image"][0, :, :, 0], batch["image"][0, :, :, -1])
    assert torch.equal(flipped["coords"][0, 0, :, 0], -batch["coords"][0, 0, :, -1])
    assert torch.equal(flipped["coords"][0, 1:, :, 0], batch["coords"][0, 1:, :, -1])
    # The mirrored identity is the mirror image of the head, through the model's own basis.
    def face_of(coeffs):
        return np.einsum("i,ivk->vk", coeffs.numpy()[0].astype(np.float64), model.id_deltas.astype(np.float64))

    truth = face_of(batch["id_coeffs"])[mirror_of(model).index] * FLIP_X
    error_mm = 1000 * np.sqrt(((face_of(flipped["id_coeffs"]) - truth)[model.face_mask] ** 2).sum(1).mean())
    size_mm = 1000 * np.sqrt((truth[model.face_mask] ** 2).sum(1).mean())
    assert error_mm < 0.1 * size_mm
    twice = train.mirrored(flipped, torch.tensor([True]), flip)
    assert torch.allclose(twice["id_coeffs"], batch["id_coeffs"], atol=0.1 * float(batch["id_coeffs"].abs().max()))


def test_mirror_averaged_cues_answer_a_mirrored_crop_with_mirrored_maps(generator, model):
    from inference_server.cues.predict import CuesPredictor

    crop = generator(6).image
    averaged, plain = (CuesPredictor.load(checkpoint.SHIPPED, model, mirror_average=m) for m in (True, False))

    def mirrored_back(dense):
        back = dense[:, :, ::-1].copy()
        back[1] = -back[1]
        return back

    direct, _ = averaged.maps(crop)
    seen_mirrored, _ = averaged.maps(crop[:, ::-1].copy())
    assert np.allclose(mirrored_back(seen_mirrored), direct, atol=1e-4)
    # Without averaging the network is only roughly equivariant: its two answers differ.
    plain_direct, _ = plain.maps(crop)
    plain_mirrored, _ = plain.maps(crop[:, ::-1].copy())
    assert np.abs(mirrored_back(plain_mirrored)[1:4] - plain_direct[1:4]).max() > 1e-3
    # A call may skip the mirror pass (a video's frames do): the plain network's answer.
    skipped, identity = averaged.maps(crop, mirror_average=False)
    assert np.allclose(skipped, plain_direct, atol=1e-5)
    assert np.allclose(identity, plain.maps(crop)[1], atol=1e-5)
    assert not np.allclose(skipped, direct, atol=1e-3)


def test_the_command_line_offers_exactly_the_registered_variants():
    from inference_server.cues.cli import VARIANTS
    from inference_server.cues.network import CONFIGS

    assert sorted(VARIANTS) == sorted(CONFIGS)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    network = build("cues-cpu").eval()
    path = tmp_path / "net.pt"
    checkpoint.save(path, network, {"note": "test"})
    loaded = checkpoint.load(path)
    image = torch.randint(0, 255, (1, 3, INPUT_SIDE, INPUT_SIDE), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(network(image)[0], loaded(image)[0])
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    state = network.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    torch.save({"format": checkpoint.FORMAT, "version": 1, "config": network.config.to_dict(), "state_dict": state},
               tmp_path / "nan.pt")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "config": network.config.to_dict(),
                "state_dict": {k: v for k, v in list(network.state_dict().items())[1:]}}, tmp_path / "missing.pt")

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": checkpoint.FORMAT, "x": Payload()}, tmp_path / "pickle.pt")
    reasons = {"truncated": "not a readable", "empty": "not a readable", "nan": "NaN", "foreign": "not a FaceForge",
               "missing": "does not match", "pickle": "other than tensors; they were not run"}
    for name, reason in reasons.items():
        with pytest.raises(checkpoint.CheckpointError, match=reason):
            checkpoint.load(tmp_path / f"{name}.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no cues checkpoint"):
        checkpoint.load(tmp_path / "absent.pt")


def test_shipped_weights_load_and_are_small():
    assert checkpoint.SHIPPED.is_file(), "the trained cues network ships with the product"
    assert checkpoint.SHIPPED.stat().st_size < 30e6
    provenance = checkpoint.read(checkpoint.SHIPPED)["provenance"]
    assert provenance["command"].startswith("python -m inference_server train fit")
    checkpoint.load(checkpoint.SHIPPED)


def test_the_probe_finds_a_linear_target_and_not_noise_in_the_encoders_features(generator):
    from benchmarks.cues_probe import encoder_features, probe

    images = torch.from_numpy(np.stack([generator(i).image for i in range(4)])).permute(0, 3, 1, 2)
    features = encoder_features(checkpoint.load(checkpoint.SHIPPED).eval(), images)
    assert features.shape == (4, 512 + 16 * 256) and np.isfinite(features).all()
    rng = np.random.default_rng(0)
    synthetic = rng.normal(size=(400, 30))
    targets = np.stack([synthetic[:, :3] @ [1.0, -2.0, 0.5], rng.normal(size=400)], 1)
    found, noise = probe(synthetic, targets, holdout=100, ridge=1.0)
    assert found > 0.99 and abs(noise) < 0.3


@pytest.fixture(scope="module")
def reader():
    return evaluation.LandmarkReader()


def test_dense_cues_in_the_fit_recover_shape_the_landmarks_miss(model, reader):
    """The fusion itself, given perfect dense cues (correspondence and nearness of the true head, as
    a flawless network would give): on renders with known shape, in-model and beyond, frontal and
    turned, the fit ends >= 25 % nearer the truth than the mean head and nearer than landmarks alone;
    an untrained network's cues enter the fit (it changes the head) without breaking it; and the
    shipped network's cues bring the head nearer the truth than landmarks alone."""
    from inference_server.cues.predict import CuesPredictor
    from inference_server.head.correspondence import LandmarkTable
    from inference_server.head.basis import ShapeBasis
    from inference_server.head.fit import fit_head

    table = LandmarkTable.load()
    basis = ShapeBasis(model, table, torch.device("cpu"))
    network = CuesPredictor(build("cues-cpu"), model)   # untrained: only its plumbing is under test here
    shipped = CuesPredictor.load(checkpoint.SHIPPED, model)
    errors = {"mean": [], "landmarks": [], "truth_cues": [], "shipped": []}
    for seed, beyond, pose in ((101, False, (0, 0, 0)), (102, True, (30, 6, -5)), (103, False, (-25, -5, 4))):
        subject = evaluation.make_subject(model, seed, beyond, pose)
        rgb = evaluation.render_subject(model, subject)
        landmarks = reader(rgb)
        fits = {name: fit_head(model, landmarks, evaluation.CAMERA_SIZE, basis=basis, cues=cues) for name, cues in
                (("landmarks", None), ("truth_cues", evaluation.truth_cues(model, subject)),
                 ("shipped", shipped(rgb, landmarks)))}
        for name, fit in fits.items():
            errors[name].append(evaluation.evaluate(model, table, subject, fit)["surface_mm"])
        errors["mean"].append(evaluation.evaluate(model, table, subject, fit)["mean_head_surface_mm"])
        if seed == 101:
            cues = network(rgb, landmarks)
            assert len(cues.vertex) == len(cues.points_px) == len(cues.nearness_px)
            with_network = fit_head(model, landmarks, evaluation.CAMERA_SIZE, basis=basis, cues=cues)
            assert np.isfinite(with_network.canonical_vertices).all()
            if len(cues.vertex):
                assert not np.allclose(with_network.canonical_vertices, fits["landmarks"].canonical_vertices)
    means = {k: float(np.mean(v)) for k, v in errors.items()}
    assert means["truth_cues"] < means["landmarks"] and means["truth_cues"] < 0.75 * means["mean"], means
    assert means["shipped"] < 0.9 * means["landmarks"], means


def test_thinned_cues_weigh_as_much_and_fit_nearly_the_same_head(model, reader):
    """A video keeps each frame's cues thinned (``Cues.thinned``, ``VideoFitConfig.frame_cue_points``):
    fewer, compact observations whose weights stand for the dropped ones, so the fit barely moves; and
    the frames' fits leave out the cues near the eyelids (``eyelid_free``)."""
    from inference_server.cues.predict import CuesPredictor
    from inference_server.head.basis import ShapeBasis
    from inference_server.head.correspondence import LandmarkTable
    from inference_server.head.fit import HeadFitConfig, fit_head
    from inference_server.video.performance import VideoFitConfig, eyelid_free

    table = LandmarkTable.load()
    basis = ShapeBasis(model, table, torch.device("cpu"))
    subject = evaluation.make_subject(model, 104, False, (20, 0, 0))
    rgb = evaluation.render_subject(model, subject)
    landmarks = reader(rgb)
    full = CuesPredictor.load(checkpoint.SHIPPED, model)(rgb, landmarks)
    thin = full.thinned(VideoFitConfig().frame_cue_points)
    assert len(full.vertex) > 1000 and len(thin.vertex) == VideoFitConfig().frame_cue_points
    assert thin.points_px.dtype == np.float32 and np.isclose(thin.weight_2d.sum(), full.weight_2d.sum(), rtol=0.05)
    # Thinned cues serve a video's fits, which weigh each cue by the network's confidence.
    config = HeadFitConfig(dense_confidence=VideoFitConfig().dense_confidence)
    heads = [fit_head(model, landmarks, evaluation.CAMERA_SIZE, config, basis=basis, cues=cues).canonical_vertices
             for cues in (None, full, thin)]
    moved, apart = (evaluation.canonical_difference_mm(model, heads[i], heads[j]) for i, j in ((0, 1), (1, 2)))
    assert apart < 0.3 * moved, (apart, moved)   # the cues move the head; thinning them hardly does
    away = eyelid_free(model, basis, VideoFitConfig().eye_margin_m)
    lids = table.points(model.vertices)[[159, 145, 386, 374]]   # upper and lower lid middles
    near = np.linalg.norm(model.vertices[:, None] - lids[None], axis=2).min(1) < 0.004
    assert not away[near].any() and 0.5 < away[model.face_mask].mean() < 0.95


def test_photos_whose_regressed_faces_lie_apart_are_refused_naming_the_odd_one(model):
    """``same_person``'s second verdict: the regressed identities' face-region distance, in mm, and
    the photo without which the others agree is the one named."""
    from types import SimpleNamespace

    from inference_server.head.same_person import (APART_LIMIT_MM, NotOnePerson, check_one_person,
                                                   farthest_apart_mm, identities_apart_mm)

    rng = np.random.default_rng(5)
    person, step = rng.standard_normal((2, model.id_deltas.shape[0])).astype(np.float32)
    other = person + 2 * step   # two random people lie ~4 mm apart; this one ~8
    apart = identities_apart_mm(model, [person, person + 0.05, other], [0.0, 20.0, -30.0])
    direct = 1000 * np.sqrt((np.tensordot(other - person, model.id_deltas, 1)[model.face_mask] ** 2).sum(1).mean())
    assert np.allclose(apart, apart.T) and np.allclose(np.diag(apart), 0, atol=1e-6)
    assert np.isclose(apart[0, 2], direct, rtol=1e-4) and apart[0, 1] < 0.5 < APART_LIMIT_MM < apart[0, 2]
    fit = SimpleNamespace(posed_vertices=np.tile([[0.0, 0.0, 1.0]], (model.vertex_count, 1)), focal=1000.0,
                          principal=(0.0, 0.0), yaw_deg=0.0)
    cues = SimpleNamespace(vertex=np.arange(10), points_px=np.ones((10, 2)))
    fits = [fit] * 3   # each photo fits the joint head as well as its own: the rise check passes
    with pytest.raises(NotOnePerson) as refused:
        check_one_person(fits, fits, [cues] * 3, lambda indices: [fit] * len(indices), apart)
    assert refused.value.photo == 2 and "mm apart" in refused.value.message
    assert check_one_person(fits, fits, [cues] * 2, None, apart[:2, :2]) == [1.0, 1.0]
    # A face turned past APART_MAX_YAW_DEG is not compared: the regression reads it less well.
    turned = identities_apart_mm(model, [person, person + 0.05, other], [0.0, 20.0, 70.0])
    assert np.isnan(turned[2]).all() and np.isnan(turned[:, 2]).all() and turned[0, 1] == apart[0, 1]
    assert check_one_person(fits, fits, [cues] * 3, None, turned) == [1.0, 1.0, 1.0]
    assert farthest_apart_mm(turned)[2] is None and farthest_apart_mm(turned)[0] == round(float(apart[0, 1]), 3)
    alone = identities_apart_mm(model, [person, other], [0.0, 70.0])   # nothing to compare the frontal one with
    assert farthest_apart_mm(alone) == [None, None] and check_one_person(fits, fits, [cues] * 2, None, alone)


def test_the_rise_limit_is_looser_where_a_face_is_turned_far():
    """A joint head that fits a photo's cues 15 % worse than its own: two people when every face is
    turned less than APART_MAX_YAW_DEG, within what one person at 70 deg shows."""
    from types import SimpleNamespace

    from inference_server.head.same_person import (APART_MAX_YAW_DEG, RISE_LIMIT, RISE_LIMIT_TURNED, NotOnePerson,
                                                   check_one_person, rise_limit)

    assert rise_limit([0.0, 35.0]) == RISE_LIMIT < 1.15 < RISE_LIMIT_TURNED == rise_limit([0.0, -APART_MAX_YAW_DEG - 1])
    cues = SimpleNamespace(vertex=np.arange(10), points_px=np.ones((10, 2)))
    vertices = np.tile([[0.0, 0.0, 1.0]], (10, 1))

    def fits(principal: float, yaws: list[float]) -> list:
        return [SimpleNamespace(posed_vertices=vertices, focal=1000.0, principal=(principal, principal), yaw_deg=yaw)
                for yaw in yaws]

    # Own heads put the cues sqrt(2) px off, the joint head 1.15 times that.
    with pytest.raises(NotOnePerson, match=r"15 % worse .*\(the limit is 10 %\)"):
        check_one_person(fits(0.0, [0.0, 35.0]), fits(-0.15, [0.0, 35.0]), [cues] * 2, None, np.zeros((2, 2)))
    rises = check_one_person(fits(0.0, [0.0, 70.0]), fits(-0.15, [0.0, 70.0]), [cues] * 2, None, np.zeros((2, 2)))
    assert np.allclose(rises, 1.15)


def test_without_usable_weights_head_mode_still_works_and_network_cues_are_refused(model, tmp_path, monkeypatch,
                                                                                   caplog):
    from addon.wire.errors import ErrorCode, ProtocolError
    from inference_server import pipeline
    from inference_server.config import ReconstructionConfig
    from inference_server.head.reconstruct import HeadReconstructor

    monkeypatch.setattr(checkpoint, "SHIPPED", tmp_path / "absent.pt")
    monkeypatch.setenv("FACEFORGE_DATA", str(tmp_path))
    (tmp_path / "cues").mkdir()
    (tmp_path / "cues" / "cues.pt").write_bytes(b"not a checkpoint")
    assert pipeline.load_cues(model, torch.device("cpu")) is None
    assert "shape_cues network is unavailable" in caplog.text and "not a readable cues checkpoint" in caplog.text
    head = HeadReconstructor(model, torch.device("cpu"), cues=None)
    # The default (auto) shapes the head from landmarks then; only an explicit network request is refused.
    assert ReconstructionConfig().shape_cues == "auto" and head.shape_source(ReconstructionConfig()) == "landmarks"
    with pytest.raises(ProtocolError) as refused:
        head.reconstruct(np.zeros((64, 64, 3), np.uint8), np.zeros((478, 3)), np.eye(2, 3),
                         ReconstructionConfig(shape_cues="network"), lambda *_: None)
    assert refused.value.code == ErrorCode.NO_MODEL and "model install" in refused.value.message


def test_model_install_takes_a_cues_checkpoint_and_refuses_a_damaged_one(tmp_path):
    env = {"FACEFORGE_DATA": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "inference_server", "model", "install"]
    good = subprocess.run(command + [str(checkpoint.SHIPPED)], env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "data" / "cues" / "cues.pt").read_bytes() == checkpoint.SHIPPED.read_bytes()
    listed = subprocess.run([sys.executable, "-m", "inference_server", "model", "list"], env=env, capture_output=True,
                            text=True)
    assert "cues" in listed.stdout and "(installed)" in listed.stdout
    damaged = tmp_path / "damaged.pt"
    data = bytearray(checkpoint.SHIPPED.read_bytes())
    damaged.write_bytes(bytes(data[: len(data) - 4096]))
    bad = subprocess.run(command + [str(damaged)], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_face_mode_cues_share_the_network_head_mode_loaded():
    from inference_server.pipeline import FacePipeline

    pipeline = FacePipeline(torch.device("cpu"), head_model=require_ict())
    path, network = pipeline.depth_networks.cues_network()
    assert network is pipeline.head.cues.network and path == checkpoint.find()
