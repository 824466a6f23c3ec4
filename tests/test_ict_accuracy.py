"""Accuracy against known geometry: ICT-FaceKit identities rendered with bpy, then reconstructed.

Uses the shared ICT-FaceKit model when the checkout has ``../shared/data/ict_facekit`` (CI does);
the product itself never needs it.
"""
import numpy as np
import pytest
import torch

from benchmarks import ict_eval

pytestmark = pytest.mark.skipif(not ict_eval.ICT_MODEL.exists(), reason=f"no ICT-FaceKit model at {ict_eval.ICT_MODEL}")


@pytest.fixture(scope="module")
def model():
    return ict_eval.load_model()


@pytest.fixture(scope="module")
def pipeline():
    from inference_server.pipeline import FacePipeline

    return FacePipeline(torch.device("cpu"))


@pytest.mark.parametrize("seed", [0, 3])
def test_recovered_depth_matches_the_true_surface(model, pipeline, seed):
    subject = ict_eval.make_subject(model, seed)
    face = pipeline.reconstruct(ict_eval.render(subject)).faces[0]
    scores = ict_eval.evaluate(face, subject)
    assert scores["coverage"] > 0.9, scores
    # Shape, not just a tilted plane: the error is well under what a plane leaves, a few millimetres.
    assert scores["rms_mm"] < 0.45 * scores["plane_mm"] and scores["rms_mm"] < 6.0, scores
    assert scores["pose_rms_mm"] < 4.0 and scores["inner_pose_rms_mm"] < 3.5, scores
    assert 0.85 < scores["mesh_to_true_width"] < 1.15, scores  # the 0.14 m face-width prior holds


def test_a_flipped_depth_would_be_caught(model, pipeline):
    """The metric itself can fail: mirroring the recovered depth must score far worse than a plane."""
    subject = ict_eval.make_subject(model, 0)
    face = pipeline.reconstruct(ict_eval.render(subject)).faces[0]
    face.arrays["vertices"] = face.arrays["vertices"] * np.array([1, -1, 1], np.float32)
    scores = ict_eval.evaluate(face, subject)
    assert scores["rms_mm"] > scores["plane_mm"], scores


def test_a_turned_head_is_a_whole_face_without_folds(model, pipeline):
    """30 degrees of yaw: the mesh is built in the face's own frame, so the far cheek is there (not a
    squashed rim) and no triangle folds over; what the camera saw stays close to the true surface."""
    subject = ict_eval.make_subject(model, 1, yaw_deg=30)
    face = pipeline.reconstruct(ict_eval.render(subject)).faces[0]
    assert 25 < abs(face.meta["yaw_deg"]) < 40, face.meta["yaw_deg"]
    normals = ict_eval.vertex_normals(face.arrays["vertices"], face.arrays["faces"])
    assert (normals[:, 1] < 0).mean() > 0.99  # frontal frame: the whole face looks toward -Y, nothing folded
    scores = ict_eval.evaluate(face, subject)
    assert 0.7 < scores["facing_camera"] < 0.95, scores  # the far cheek exists, turned away from the camera
    assert scores["rms_mm"] < 0.6 * scores["plane_mm"] and scores["pose_rms_mm"] < 5.0, scores
    assert 0.8 < scores["mesh_to_true_width"] < 1.15, scores


def test_the_cues_network_as_face_depth_brings_a_head_beyond_the_model_nearer_the_truth(model, pipeline):
    """``depth_backend`` cues: the project's own network (shipped, no head model needed) shapes the
    landmark surface. On Blender renders (not its training renderer) of identities carrying bumps its
    model cannot represent, one frontal and one turned 25 degrees, the face comes out nearer the true
    surface than from landmarks alone; the reply says which source shaped it."""
    from inference_server.head.model import HeadModel

    head_model = HeadModel.load(ict_eval.ICT_MODEL)
    errors = {"landmarks": [], "cues": []}
    for seed, yaw in ((11, 0.0), (12, 25.0)):
        subject = ict_eval.make_subject(model, seed, yaw_deg=yaw, beyond=head_model)
        photo = ict_eval.render(subject)
        for backend in errors:
            face = pipeline.reconstruct(photo, {"geometry": "face", "depth_backend": backend}).faces[0]
            assert face.meta["depth_backend"] == backend
            errors[backend].append(ict_eval.evaluate(face, subject)["pose_rms_mm"])
    assert face.meta["depth_network"]["alignment"]["usable"] and face.meta["depth_network"]["name"] == "cues-cpu"
    assert np.mean(errors["cues"]) < 0.95 * np.mean(errors["landmarks"]), errors
