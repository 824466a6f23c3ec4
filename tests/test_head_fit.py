"""Head-model fit: the rasteriser, the landmark table, and fits to renders with known truth and to
real photos (upright, tilted, mirrored). Needs the shared ICT-FaceKit npz (test data only)."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree

from benchmarks import head_fit_eval as evaluation
from inference_server.head import raster, render
from inference_server.head.basis import ShapeBasis
from inference_server.head.correspondence import LandmarkTable
from inference_server.head.fit import HeadFitConfig, fit_head
from tests.conftest import grace_hopper_path

MODEL_PATH = evaluation.shared_model_path()
needs_model = pytest.mark.skipif(not MODEL_PATH.exists(), reason=f"no ICT-FaceKit model at {MODEL_PATH}")


def test_raster_coverage_depth_and_nearest_wins():
    # Two overlapping squares (two triangles each) at depths 2 and 1: the nearer one owns the overlap.
    screen = torch.tensor([[2, 2, 2], [12, 2, 2], [12, 12, 2], [2, 12, 2],
                           [6, 6, 1], [16, 6, 1], [16, 16, 1], [6, 16, 1]], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    result = raster.rasterize(screen, faces, (20, 20))
    assert int(result.mask.sum()) == 10 * 10 + 10 * 10 - 6 * 6
    assert (result.triangle[8, 8] >= 2) and torch.isclose(result.depth[8, 8], torch.tensor(1.0))
    assert (result.triangle[3, 3] < 2) and torch.isclose(result.depth[3, 3], torch.tensor(2.0))
    assert torch.allclose(result.bary[result.mask].sum(-1), torch.ones(int(result.mask.sum())))
    assert result.triangle[0, 0] == -1 and torch.isinf(result.depth[0, 0])


def test_interpolation_carries_gradients_to_vertices():
    screen = torch.tensor([[1.0, 1.0, 1.0], [9.0, 1.5, 1.2], [2.0, 9.0, 0.9]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    result = raster.rasterize(screen, faces, (10, 10))
    value = raster.interpolate(torch.tensor([[0.0], [1.0], [2.0]]), faces, result)
    value.sum().backward()
    assert screen.grad is not None and screen.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def model():
    from inference_server.head.model import HeadModel

    return HeadModel.load(MODEL_PATH)


@pytest.fixture(scope="module")
def table():
    return LandmarkTable.load()


@pytest.fixture(scope="module")
def basis(model, table):
    return ShapeBasis(model, table, torch.device("cpu"))


@pytest.fixture(scope="module")
def reader():
    return evaluation.LandmarkReader()


@needs_model
def test_confidence_weights_keep_their_total_and_flatten_to_equal_shares():
    from inference_server.head.objective import confidence_weights

    weights = np.array([0.2, 0.5, 1.0, 2.0, 4.3]) * 3   # thinned cues: each stands for three points
    assert np.allclose(confidence_weights(weights, 0.0), weights.mean())
    assert confidence_weights(weights, 1.0) is weights
    squared = confidence_weights(weights, 2.0)
    assert np.isclose(squared.sum(), weights.sum()) and np.all(np.diff(squared / weights) > 0)
    assert confidence_weights(np.zeros(0), 0.0).shape == (0,)


def test_landmark_table_is_on_the_face_and_symmetric(model, table):
    assert table.triangle_vertices.shape == (478, len(table.yaw_bins), 3)
    assert np.allclose(table.bary.sum(-1), 1, atol=1e-5) and (table.bary >= 0).all()
    frontal = table.points(model.vertices)
    eyeballs = np.isin(model.vertex_part, [model.part_names.index(p) for p in ("eyeball_left", "eyeball_right")])
    on_face = (model.face_mask | eyeballs)[table.triangle_vertices].all(-1).mean()
    assert on_face > 0.97, on_face
    # Mirror symmetry: every frontal landmark has a partner at its reflection (within 2 mm).
    gaps = cKDTree(frontal).query(frontal * [-1, 1, 1])[0]
    assert np.median(gaps) < 0.0005 and gaps.max() < 0.002, gaps.max()


@needs_model
def test_eyelid_points_sit_on_the_lids_and_close_with_a_blink(model, table):
    """FaceMesh's eyelid points lie on the lids' margins. Traced back through a render, an upper-lid
    point hits the eyeball just below the margin, where a blink cannot move it; the table must put
    every eye-ring point on skin (plus its fixed offset to the hits), and a full blink must close the
    upper and lower lids' points. Measured: 9.2-10.1 mm apart open, 1.4-5.2 mm shut over the yaw bins
    (on the skin without the offset 11.1-11.8 and 3.3-6.2; on the eyeballs they were 9.1-10.1 mm apart
    and a blink moved them 0.2-0.9 mm further apart)."""
    from inference_server.landmarks import EYE_RINGS

    rings = np.array(EYE_RINGS)
    skin = np.isin(model.vertex_part, [model.part_names.index(p) for p in ("face", "head_neck")])
    assert skin[table.triangle_vertices[rings.ravel()]].all()
    for side, (upper, lower) in (("R", (159, 145)), ("L", (386, 374))):
        blink = np.zeros(len(model.exp_names), np.float32)
        blink[model.exp_names.index(f"eyeBlink_{side}")] = 1.0
        for yaw in table.yaw_bins:
            open_ = table.points(model.shape(exp_weights=np.zeros_like(blink)), float(yaw))
            shut = table.points(model.shape(exp_weights=blink), float(yaw))
            gap_open, gap_shut = (1000 * np.linalg.norm(points[upper] - points[lower]) for points in (open_, shut))
            assert gap_open > 8.0 and gap_shut < 0.6 * gap_open, (side, yaw, gap_open, gap_shut)


@needs_model
def test_the_derivation_keeps_the_lids_hits_and_puts_the_rest_on_the_skin(model, table):
    """scripts/derive_head_landmarks.py's table from hits with a known answer: every landmark's hits at
    the shipped table's points, the eyelids' and the nose tip's pushed 2 mm into the head. The lid
    points come back on their hits (skin place + ``hit_offset``); the nose tip comes back on
    the skin with no offset, as every point but the lids'."""
    from inference_server.landmarks import EYE_RINGS, NOSE_TIP
    from scripts.derive_head_landmarks import YAW_BINS, build_table

    lids = np.concatenate(EYE_RINGS)
    on_skin = replace(table, hit_offset=None)
    vertices = model.vertices.astype(np.float64)
    hits = np.stack([on_skin.points(vertices, yaw) for yaw in YAW_BINS])
    hits[:, np.append(lids, NOSE_TIP)] -= [0.0, 0.0, 0.002]
    rebuilt = build_table(model, hits, np.array([(yaw, 0) for yaw in YAW_BINS]))
    for b, yaw in enumerate(YAW_BINS):
        points = rebuilt.points(vertices, yaw)
        assert np.abs(points[lids] - hits[b, lids]).max() < 2e-4, yaw   # up to the mirror averaging
        assert np.linalg.norm(points[NOSE_TIP] - hits[b, NOSE_TIP]) > 0.0005, yaw   # snapped back out
    others = np.setdiff1d(np.arange(478), lids)
    assert (rebuilt.hit_offset[others] == 0).all() and np.abs(rebuilt.hit_offset[lids]).max() > 0.001


@needs_model
def test_a_rendered_blink_is_fitted_as_a_blink(model, basis, reader):
    """The same head rendered with open and with closed eyes, frontal and turned 25 deg: the fit finds
    the blink where the eyes are closed, and open eyes stay open even turned 40 deg. Measured: 0.35-0.58
    shut, 0.00 open, 0.00-0.03 open at +-40 deg. With the lids' points on the skin alone (no
    ``hit_offset``) it was 0.48-0.71 shut and 0.03-0.11 open, but 0.14-0.24 open at +-40 deg: a
    three-quarter portrait got sleepy eyes. Before the eyelid points were moved off the eyeballs, 0.00-0.15
    shut. One photo cannot tell narrow eyes from half-closed ones, so a full blink is not expected here."""
    left, right = model.exp_names.index("eyeBlink_L"), model.exp_names.index("eyeBlink_R")

    def blink(pose, shut: bool) -> np.ndarray:
        subject = evaluation.make_subject(model, 5, False, pose)
        weights = np.zeros(len(model.exp_names), np.float32)
        weights[[left, right]] = float(shut)
        landmarks = reader(evaluation.render_subject(model, replace(subject, exp_weights=weights)))
        return fit_head(model, landmarks, evaluation.CAMERA_SIZE, basis=basis).exp_weights[[left, right]]

    for pose in ((0.0, 4.0, 0.0), (25.0, 4.0, -3.0)):
        found = {shut: blink(pose, shut) for shut in (False, True)}
        assert (found[True] > 0.3).all() and (found[True] - found[False] > 0.3).all(), (pose, found)
    for yaw in (-40.0, 40.0):
        assert (blink((yaw, 2.0, 0.0), False) < 0.1).all(), yaw


@needs_model
def test_the_expression_drift_moves_only_the_expression_columns(model, table, basis, tmp_path):
    """The shipped table carries FaceMesh's drift for jawOpen only (scripts/derive_expression_drift.py);
    the basis adds it to that expression's column, and a table saved without drift loads without it."""
    drift = table.expression_drift
    moving = {model.exp_names[e] for e in np.nonzero(np.abs(drift).sum((0, 2)))[0]}
    assert drift.shape == (478, len(model.exp_names), 3) and moving == {"jawOpen"}, moving
    plain = replace(table, expression_drift=None)
    plain.save(tmp_path / "plain.npz")
    assert LandmarkTable.load(tmp_path / "plain.npz").expression_drift is None
    without = ShapeBasis(model, plain, torch.device("cpu"))
    for yaw in (0.0, 25.0):
        (mean, rows), (mean_0, rows_0) = basis.landmarks(yaw), without.landmarks(yaw)
        identity = basis.identity_count
        assert torch.equal(mean, mean_0) and torch.equal(rows[:, :, :identity], rows_0[:, :, :identity])
        added = (rows - rows_0)[:, :, identity:].numpy()
        assert np.allclose(added, drift.transpose(0, 2, 1), atol=1e-6)


LOWER_INNER_LIP = [14, 87, 178, 88, 95, 317, 402, 318, 324]


@needs_model
def test_the_drift_predicts_how_facemesh_moves_the_lower_lip(model, table, basis, reader):
    """FaceMesh's lower inner-lip points follow the lower lip as the jaw opens, while the table puts
    them on the upper lip (they meet when the mouth is shut). A head unlike the drift's derivation
    (another identity, camera and distance, turned 25 deg) is rendered neutral and with the jaw half
    open: the basis with the drift must predict how FaceMesh's points moved much closer than without
    it. Measured: 6.7 vs 13.5 px mean error (FaceMesh moved them 17 px)."""
    from inference_server.head.correspondence import head_yaw_deg

    without = ShapeBasis(model, replace(table, expression_drift=None), torch.device("cpu"))
    subject = replace(evaluation.make_subject(model, 5, False, (25.0, 4.0, -3.0)),
                      exp_weights=np.zeros(len(model.exp_names), np.float32))
    yaw = head_yaw_deg(subject.rotation, subject.translation)
    principal = (evaluation.CAMERA_SIZE[1] / 2, evaluation.CAMERA_SIZE[0] / 2)

    def projected(shape_basis, weights):
        mean, rows = shape_basis.landmarks(yaw)
        coeffs = torch.from_numpy(np.concatenate([subject.id_coeffs, weights]).astype(np.float32))
        posed = (mean + rows @ coeffs).numpy() @ subject.rotation.T + subject.translation
        return raster.project(torch.from_numpy(posed.astype(np.float32)), evaluation.CAMERA_FOCAL, principal).numpy()[:, :2]

    weights = np.zeros(len(model.exp_names), np.float32)
    weights[model.exp_names.index("jawOpen")] = 0.5
    neutral = reader(evaluation.render_subject(model, subject))[:, :2]
    seen = reader(evaluation.render_subject(model, replace(subject, exp_weights=weights)))[:, :2] - neutral
    error = {}
    for label, shape_basis in (("drift", basis), ("none", without)):
        predicted = projected(shape_basis, weights) - projected(shape_basis, 0 * weights)
        error[label] = float(np.linalg.norm((predicted - seen)[LOWER_INNER_LIP], axis=1).mean())
    assert error["drift"] < 0.6 * error["none"], error


@needs_model
def test_visibility_and_facing_of_a_frontal_head(model, table):
    posed = torch.from_numpy((model.vertices * [1, -1, -1] + [0, 0, 0.8]).astype(np.float32))
    faces = torch.from_numpy(render.drawn_faces(model)).long()
    screen = raster.project(posed, 1200.0, (256.0, 256.0))
    result = raster.rasterize(screen, faces, (512, 512), render.FRONT_FACING)
    visible = raster.vertex_visibility(screen, result, eps=0.002).numpy()
    facing = raster.vertex_facing(posed, raster.vertex_normals(posed, faces)).numpy()
    nose_tip = table.points(model.vertices)[1]
    nose_vertex = int(np.argmin(np.linalg.norm(model.vertices - nose_tip, axis=1)))
    back_of_head = int(np.argmin(model.vertices[:, 2]))
    assert visible[nose_vertex] and facing[nose_vertex] > 0.8
    assert not visible[back_of_head] and facing[back_of_head] < 0


@needs_model
@pytest.mark.parametrize("beyond", [False, True], ids=["in_model", "beyond_model"])
def test_fit_recovers_a_turned_head_with_known_shape(model, table, basis, reader, beyond):
    """Renders with known identity, expression and pose; "beyond" adds a smooth displacement no
    coefficients can reproduce. The turned fit must match the frontal fit's canonical head."""
    fits = {}
    for pose_name, pose in evaluation.POSES.items():
        subject = evaluation.make_subject(model, 11, beyond, pose)
        landmarks = reader(evaluation.render_subject(model, subject))
        fits[pose_name] = fit_head(model, landmarks, evaluation.CAMERA_SIZE, HeadFitConfig(), torch.device("cpu"),
                                   basis=basis)
        scores = evaluation.evaluate(model, table, subject, fits[pose_name])
        assert scores["face_pose_deg"] < 5.0 and scores["pose_deg"] < 7.0, scores
        assert scores["landmark_mm"] < 4.0 and scores["surface_mm"] < 2.6, scores
        assert scores["residual_pct"] < 3.0, scores
    pair = evaluation.canonical_difference_mm(model, fits["turned"].canonical_vertices, fits["frontal"].canonical_vertices)
    assert pair < 3.0, pair


@needs_model
def test_several_photos_of_one_head_fit_it_better_than_one(model, table, basis, reader):
    """Two subjects of each kind, each rendered at 0, 35 and 70 degrees of yaw: one identity fitted to
    a subject's three photos lies nearer its true surface than the single photos' fits do on average (by 10 %)
    and well below the mean head's error, and each photo keeps its own pose (up to 35 degrees)."""
    from benchmarks.multiview_eval import sittings
    from inference_server.head.camera import rotation_angle_deg
    from inference_server.head.fit import View, fit_views

    single, joint, mean_head = [], [], []
    for _, _, subjects in sittings(model, 2, [0.0, 35.0, 70.0]):
        truth = subjects[0].canonical(model)
        marks = [reader(evaluation.render_subject(model, subject)) for subject in subjects]
        error = lambda vertices: evaluation.shape_errors(model, table, vertices, truth)["surface_mm"]  # noqa: E731
        single.append(np.mean([error(fit_head(model, m, evaluation.CAMERA_SIZE, basis=basis).canonical_vertices)
                               for m in marks]))
        together = fit_views(model, [View(m, evaluation.CAMERA_SIZE) for m in marks], basis=basis)
        joint.append(error(together[0].canonical_vertices))
        mean_head.append(error(model.vertices))
        assert all(np.array_equal(together[0].id_coeffs, fit.id_coeffs) for fit in together)
        for subject, fit in zip(subjects[:2], together):  # at 70 deg FaceMesh places its points as if at ~50
            assert rotation_angle_deg(subject.rotation, fit.rotation) < 8.0
    # Measured: joint 1.99 mm, single photos 2.36, mean head 2.49 (the benchmark: multiview_eval.py).
    assert np.mean(joint) < 0.9 * np.mean(single) and np.mean(joint) < 0.9 * np.mean(mean_head), (joint, single)


@pytest.fixture(scope="module")
def photo_fits(model, basis, reader):
    from skimage import data

    astronaut = data.astronaut()
    grace = np.asarray(Image.open(grace_hopper_path()).convert("RGB"))
    tilted = np.asarray(Image.fromarray(astronaut).rotate(20, resample=Image.BICUBIC, expand=True,
                                                          fillcolor=(128, 128, 128)))
    photos = {"astronaut": astronaut, "grace": grace, "astronaut_tilted": tilted,
              "astronaut_mirrored": astronaut[:, ::-1].copy(), "grace_mirrored": grace[:, ::-1].copy()}
    fits = {}
    for name, rgb in photos.items():
        landmarks = reader(rgb)
        fits[name] = (landmarks, fit_head(model, landmarks, rgb.shape[:2], HeadFitConfig(), torch.device("cpu"),
                                          basis=basis))
    return fits


def _face_distance_mm(model, a: np.ndarray, b: np.ndarray) -> float:
    return float(1000 * np.linalg.norm(a[model.face_mask] - b[model.face_mask], axis=1).mean())


@needs_model
def test_real_photos_fitted_landmarks_land_on_mediapipes(photo_fits):
    from inference_server.head.objective import eye_distance

    for name, (landmarks, fit) in photo_fits.items():
        error = np.linalg.norm(fit.landmarks_fitted_px - landmarks[:, :2], axis=1) / eye_distance(landmarks)
        assert np.median(error) < 0.03 and np.percentile(error, 90) < 0.06, (name, np.percentile(error, [50, 90]))
        assert abs(fit.residual_eye_pct - 100 * np.median(error)) < 1e-3


@needs_model
def test_mirrored_photo_gives_the_mirrored_head_and_tilt_changes_nothing(model, photo_fits):
    mirror = cKDTree(model.vertices).query(model.vertices * [-1, 1, 1])[1]
    canonical = {name: fit.canonical_vertices for name, (_, fit) in photo_fits.items()}
    different_people = _face_distance_mm(model, canonical["astronaut"], canonical["grace"])
    for name in ("astronaut", "grace"):
        mirrored_back = canonical[f"{name}_mirrored"][mirror] * [-1, 1, 1]
        gap = _face_distance_mm(model, mirrored_back, canonical[name])
        assert gap < 2.5 and gap < 0.5 * different_people, (name, gap, different_people)
    tilt_gap = _face_distance_mm(model, canonical["astronaut_tilted"], canonical["astronaut"])
    assert tilt_gap < 1.5 and tilt_gap < 0.25 * different_people, (tilt_gap, different_people)
    rolls = [np.degrees(np.arctan2(fit.rotation[1, 0], fit.rotation[0, 0])) for name, (_, fit) in photo_fits.items()
             if name in ("astronaut", "astronaut_tilted")]
    assert abs(abs(rolls[1] - rolls[0]) - 20) < 3, rolls   # the tilt went into the pose


@needs_model
def test_depth_map_of_the_fit_covers_the_face(model, photo_fits):
    landmarks, fit = photo_fits["astronaut"]
    depth, mask, scale = render.depth_map(fit.posed_vertices, render.drawn_faces(model), fit.camera, max_side=256)
    assert depth.shape == mask.shape == (256, 256) and scale == 0.5
    inside = np.round(landmarks[:468, :2] * scale).astype(int)
    assert mask[inside[:, 1], inside[:, 0]].mean() > 0.97
    assert np.all(np.abs(depth[mask] - fit.translation[2]) < 0.3)
    assert (depth[~mask] == 0).all()


@needs_model
def test_bad_landmarks_are_refused(model, basis):
    with pytest.raises(ValueError, match="478, 3"):
        fit_head(model, np.zeros((468, 3)), (512, 512), basis=basis)
    with pytest.raises(ValueError, match="finite"):
        fit_head(model, np.full((478, 3), np.nan), (512, 512), basis=basis)
