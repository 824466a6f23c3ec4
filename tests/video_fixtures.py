"""A rendered video of a known head with known expression curves and head motion (shared by the video,
server and batch tests)."""
from dataclasses import replace

import numpy as np
import pytest

from inference_server.video.reader import write_mp4

from .ict_fixtures import ICT_NPZ


@pytest.fixture(scope="module")
def performed_video(tmp_path_factory):
    """2 s at 15 fps of a known head: the jaw opens and closes, both eyes blink once, the head turns
    +-15 deg (the project's rasteriser, written by OpenCV's MPEG-4 encoder)."""
    if not ICT_NPZ.exists():
        pytest.skip(f"no ICT-FaceKit model at {ICT_NPZ}")
    from benchmarks.head_fit_eval import make_subject, render_subject
    from inference_server.head.model import HeadModel

    model = HeadModel.load(ICT_NPZ)
    times = np.arange(30) / 15.0
    weights = np.zeros((len(times), len(model.exp_names)), np.float32)
    weights[:, model.exp_names.index("jawOpen")] = 0.5 * np.sin(np.pi * times / 2) ** 2
    for side in ("eyeBlink_L", "eyeBlink_R"):
        weights[:, model.exp_names.index(side)] = np.exp(-0.5 * ((times - 1.4) / 0.1) ** 2)
    angles = np.stack([15 * np.sin(np.pi * times), 4 * np.sin(2 * np.pi * times / 2), np.zeros_like(times)], 1)
    subject = make_subject(model, 3, False)
    frames = (render_subject(model, replace(subject, exp_weights=w, pose=tuple(map(float, a))))
              for w, a in zip(weights, angles))
    path = tmp_path_factory.mktemp("video") / "performed.mp4"
    write_mp4(path, frames, fps=15.0)
    return path, model.exp_names, weights, angles
