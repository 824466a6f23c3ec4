"""Folders of photo files shared by the add-on and batch tests, built from the session photos in
conftest.py (astronaut_png, astronaut_rgb, grace_hopper_jpg, no_face_png, corrupt_bytes).

Imported by name into the test modules that use them (``from tests.photo_fixtures import ...``).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, astronaut_png, grace_hopper_jpg, no_face_png, corrupt_bytes) -> Path:
    """Two real photos, a real photo without a face, a corrupt JPEG and a non-photo file."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "astronaut.png").write_bytes(astronaut_png)
    (folder / "grace_hopper.jpg").write_bytes(grace_hopper_jpg)
    (folder / "coffee_no_face.png").write_bytes(no_face_png)
    (folder / "corrupt.jpg").write_bytes(corrupt_bytes)
    (folder / "notes.txt").write_text("not a photo: ignored by folder discovery\n")
    return folder


@pytest.fixture(scope="session")
def one_photo_folder(tmp_path_factory, astronaut_png) -> Path:
    folder = tmp_path_factory.mktemp("one_photo")
    (folder / "astronaut.png").write_bytes(astronaut_png)
    return folder


@pytest.fixture(scope="session")
def two_faces_folder(tmp_path_factory, astronaut_rgb, grace_hopper_jpg) -> Path:
    """One photo with two faces, ``pair.png``: the astronaut and Grace Hopper side by side."""
    left = Image.fromarray(astronaut_rgb)
    right = Image.open(io.BytesIO(grace_hopper_jpg)).convert("RGB")
    right = right.resize((round(right.width * left.height / right.height), left.height), Image.LANCZOS)
    canvas = np.concatenate([np.asarray(left), np.asarray(right)], axis=1)
    folder = tmp_path_factory.mktemp("two_faces")
    Image.fromarray(canvas).save(folder / "pair.png")
    return folder
