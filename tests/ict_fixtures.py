"""The shared ICT-FaceKit data for tests (never part of the product), and upstream-style folders and
archives built from it.

The shared folder sits beside the checkout (``../shared``); worktrees live elsewhere, so fall back
to ``/work/shared``.
"""
from __future__ import annotations

import http.server
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inference_server.head import convert

from benchmarks.ict_eval import SHARED  # noqa: E402  (one place knows where the shared data is)

ICT_DIR = SHARED / "data" / "ict_facekit"
ICT_NPZ = ICT_DIR / "ict_face_model.npz"
UPSTREAM_SAMPLE = ICT_DIR / "upstream_sample" / "FaceXModel"
SAMPLE_EXPRESSIONS = ("jawOpen", "eyeBlink_L", "mouthSmile_R")
SAMPLE_IDENTITIES = (0, 1)


def require_ict() -> Path:
    """The shared model file, or skip the calling test when this checkout has no shared data."""
    if not (ICT_NPZ.is_file() and (UPSTREAM_SAMPLE / convert.NEUTRAL).is_file()):
        pytest.skip(f"no shared ICT-FaceKit data at {ICT_DIR}")
    return ICT_NPZ


def folder_with_stand_ins(folder: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """A FaceXModel folder: the real upstream sample files, and links to them under every name the
    sample lacks (identities -> identity001.obj, expressions -> the neutral mesh), minus ``leave_out``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in UPSTREAM_SAMPLE.iterdir():
        (folder / path.name).symlink_to(path)
    (folder.parent / "LICENSE").symlink_to(UPSTREAM_SAMPLE.parent / "LICENSE")
    for name in convert.required_files():
        if not (folder / name).exists() and name not in leave_out:
            stand_in = "identity001.obj" if name.startswith("identity") else convert.NEUTRAL
            (folder / name).symlink_to(UPSTREAM_SAMPLE / stand_in)
    return folder


def upstream_obj_texts(model_npz: Path) -> dict[str, bytes]:
    """Every FaceXModel file re-created from the converted model: the neutral mesh and
    vertex_indices.json are the upstream sample files; identity and expression files carry the
    model's shapes as ``v`` records in upstream centimetres (the converter reads only those)."""
    neutral_bytes = (UPSTREAM_SAMPLE / convert.NEUTRAL).read_bytes()
    neutral_cm = convert.parse_vertices(neutral_bytes, convert.NEUTRAL)
    texts = {convert.NEUTRAL: neutral_bytes, convert.INDICES: (UPSTREAM_SAMPLE / convert.INDICES).read_bytes()}
    with np.load(model_npz) as data:
        for kind in ("id", "exp"):
            for name, delta in zip(data[f"{kind}_names"], data[f"{kind}_deltas"]):
                shape = neutral_cm + delta.astype(np.float64) * convert.CM_TO_M
                texts[f"{name}.obj"] = obj_vertex_records(shape)
    return texts


def obj_vertex_records(vertices: np.ndarray) -> bytes:
    """``v`` records with fixed-width numbers (``-012.3456``, 1e-4 cm steps), formatted in numpy
    because printf-style formatting of 150 files x 80k numbers would take seconds."""
    fixed = np.round(np.abs(vertices) * 1e4).astype(np.int64)
    if fixed.max() >= 10 ** 7:
        raise ValueError("coordinates beyond +-999 cm do not fit the fixed-width records")
    digits = (fixed[..., None] // 10 ** np.arange(6, -1, -1)) % 10 + ord("0")        # (V, 3, 7)
    fields = np.empty(vertices.shape + (10,), np.uint8)
    fields[..., 0] = ord(" ")
    fields[..., 1] = np.where(vertices < 0, ord("-"), ord("0"))
    fields[..., 2:5], fields[..., 5], fields[..., 6:] = digits[..., :3], ord("."), digits[..., 3:]
    lines = np.empty((len(vertices), 32), np.uint8)
    lines[:, 0], lines[:, -1] = ord("v"), ord("\n")
    lines[:, 1:31] = fields.reshape(len(vertices), 30)
    return lines.tobytes()


def write_repository_zip(path: Path, texts: dict[str, bytes], commit: str) -> Path:
    """A zip laid out like GitHub's archive of the repository: ``ICT-FaceKit-<commit>/FaceXModel/...``
    (stored, not deflated: the converter reads both, and deflating 130 MB would slow the tests)."""
    root = f"ICT-FaceKit-{commit}/"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(root + "LICENSE", (ICT_DIR / "LICENSE").read_bytes())
        archive.writestr(root + "README.md", b"# ICT FaceKit\n")
        for name, data in texts.items():
            archive.writestr(root + "FaceXModel/" + name, data)
    return path


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves files from a folder on 127.0.0.1 (the model fetch tests' stand-in for GitHub); ``/stall`` sends
    headers, then nothing."""

    def __init__(self, folder: Path):
        folder_ = folder

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/stall":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    time.sleep(3)
                    return
                path = folder_ / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with open(path, "rb") as handle:
                    shutil.copyfileobj(handle, self.wfile)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
