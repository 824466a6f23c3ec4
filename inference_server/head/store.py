"""Where the user's head model lives, and how it gets there: ``install`` (folder, repository zip or
converted .npz), ``fetch`` (the upstream archive at a pinned commit, verified), ``find_model``.

The product never ships the model: it converts what the user has into one ``.npz`` in the data
directory (``$FACEFORGE_DATA``, else the platform's user data folder from platformdirs).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data_dir import data_dir
from ..source_files import check_source, read_small_text
from .convert import convert_source, open_source, write_npz
from .model import HeadModel

PINNED_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
PINNED_URL = f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{PINNED_COMMIT}.zip"
MAX_DOWNLOAD_BYTES = 1 << 30  # the upstream archive is a few hundred MB
MAX_SOURCE_BYTES = 2 << 30    # a source file (that archive, or a converted .npz of ~16 MB) is never larger
MODEL_FILE = "ict-facekit.npz"
LICENCE_FILE = "ict-facekit.LICENSE.txt"
LICENCE_NOTICE = ("ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit) is MIT-licensed, Copyright (c) 2020 USC Institute "
                  "for Creative Technologies; keep its licence with any copy of the model.")
# Figures of the model converted at PINNED_COMMIT (recorded from the shared ict_face_model.npz). Zip
# archives are not byte-stable, the OBJ numbers inside are: compare the converted arrays, with a tolerance.
FINGERPRINT = {"vertices_sum": 1832.9631842619106, "vertices_norm": 16.54686293987071, "uv_sum": 67384.69564576936,
               "faces_index_sum": 2057199985.0, "id_norm": 0.9653352802306486, "id_mode_centre": 5.5182235570816145,
               "id_sum": 92.75892382860184, "exp_norm": 3.1234654928407966, "exp_mode_centre": 28.75334708434703}
FINGERPRINT_RTOL = 1e-3


class InstallError(Exception):
    """The source could not be installed (bad source, failed verification, unwritable data folder)."""


class FetchError(Exception):
    """The download failed (unreachable, HTTP error, timeout, too large)."""


@dataclass(frozen=True)
class InstalledModel:
    path: Path
    size_bytes: int
    vertices: int
    identities: int
    expressions: int


def models_dir() -> Path:
    return data_dir() / "models"


def default_model_path() -> Path:
    """Where ``install`` puts the model (whether or not it is there yet)."""
    return models_dir() / MODEL_FILE


def find_model() -> Path | None:
    path = default_model_path()
    return path if path.is_file() else None


def missing_model_message() -> str:
    """What head mode tells a user who has no model yet."""
    return (f"no head model installed (looked in {models_dir()}): run `python -m inference_server model fetch` to "
            "download ICT-FaceKit, or `python -m inference_server model install SOURCE` with its FaceXModel folder, "
            "a zip of its repository or a converted .npz")


def fingerprint(model: HeadModel) -> dict[str, float]:
    """A few sums and norms that change when any part of the model does (values, order or sign of modes)."""
    def modes(deltas: np.ndarray) -> tuple[float, float, float]:
        flat = deltas.reshape(len(deltas), -1).astype(np.float64)
        energy = np.einsum("kn,kn->k", flat, flat)
        centre = (np.arange(1, len(energy) + 1) * energy).sum() / energy.sum()
        return float(np.sqrt(energy.sum())), float(centre), float(flat.sum())

    vertices = model.vertices.astype(np.float64)
    id_norm, id_centre, id_sum = modes(model.id_deltas)
    exp_norm, exp_centre, _ = modes(model.exp_deltas)
    return {"vertices_sum": float(vertices.sum()), "vertices_norm": float(np.linalg.norm(vertices)),
            "uv_sum": float(model.uv.astype(np.float64).sum()), "faces_index_sum": float(model.faces.astype(np.int64).sum()),
            "id_norm": id_norm, "id_mode_centre": id_centre, "id_sum": id_sum,
            "exp_norm": exp_norm, "exp_mode_centre": exp_centre}


def verify(model: HeadModel) -> None:
    """Refuse a model whose fingerprint differs from the pinned commit's (``InstallError``)."""
    found = fingerprint(model)
    off = [key for key, want in FINGERPRINT.items() if not np.isclose(found[key], want, rtol=FINGERPRINT_RTOL, atol=0)]
    if off:
        detail = ", ".join(f"{key} {found[key]:.6g} (expected {FINGERPRINT[key]:.6g})" for key in off)
        raise InstallError(f"the model does not match ICT-FaceKit at commit {PINNED_COMMIT[:12]}: {detail}")


def install(source: str | Path, *, verify_pinned: bool = False, log: Callable[[str], None] = print,
            label: str | None = None) -> Path:
    """Convert (or copy) ``source`` into the data directory and return the installed model's path.
    ``label`` names the source in the messages (the address a download came from)."""
    source = Path(source)
    if not source.exists():
        raise InstallError(f"{source} does not exist")
    check_source(source, MAX_SOURCE_BYTES, InstallError, "head model source", folder_ok=True)
    target = default_model_path()
    try:
        model, write, licence = _read_source(source)  # HeadModel checks every array
        if verify_pinned:
            verify(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".install-") as scratch:
            write(Path(scratch) / MODEL_FILE)
            os.replace(Path(scratch) / MODEL_FILE, target)
        (target.parent / LICENCE_FILE).write_text(licence or f"ICT-FaceKit: {model.info.get('license', LICENCE_NOTICE)}\n")
    except ValueError as exc:  # ConversionError, ModelFileError, arrays numpy refuses
        raise InstallError(str(exc)) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a damaged member of an .npz (bad CRC, truncated)
        raise InstallError(f"{label or source} is damaged ({exc})") from None
    except OSError as exc:
        raise InstallError(f"cannot install into {target.parent}: {exc.strerror or exc}") from None
    log(f"installed ICT-FaceKit head model: {model.vertex_count} vertices, {len(model.faces)} triangles, "
        f"{len(model.id_deltas)} identity modes, {len(model.exp_names)} expressions")
    log(f"  from {label or source}")
    log(f"  to   {target} ({target.stat().st_size / 1e6:.1f} MB)")
    log(f"licence: {LICENCE_NOTICE} (saved as {target.parent / LICENCE_FILE})")
    return target


def _read_source(source: Path) -> tuple[HeadModel, Callable[[Path], None], str | None]:
    """The model, how to write it as one .npz, and the licence text that came with the source."""
    if source.is_file() and zipfile.is_zipfile(source) and _is_npz(source):
        return (HeadModel.load(source), lambda path: shutil.copyfile(source, path),
                read_small_text(source.parent / "LICENSE"))  # never through a link
    with contextlib.closing(open_source(source)) as model_source:
        arrays = convert_source(model_source)
        licence = model_source.licence_text()
    return HeadModel.from_arrays(arrays), lambda path: write_npz(arrays, path), licence


def _is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(".npy") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False  # open_source then names the damage


def installed_models() -> list[InstalledModel]:
    """The models in the data directory, described from their headers (no deltas are loaded)."""
    found = []
    for path in sorted(models_dir().glob("*.npz")) if models_dir().is_dir() else []:
        try:
            shapes = _npz_shapes(path)
            found.append(InstalledModel(path, path.stat().st_size, shapes["vertices"][0], shapes["id_deltas"][0],
                                        shapes["exp_deltas"][0]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
    return found


def _npz_shapes(path: Path) -> dict[str, tuple]:
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for key in ("vertices", "id_deltas", "exp_deltas"):
            with archive.open(f"{key}.npy") as handle:
                version = np.lib.format.read_magic(handle)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shapes[key] = reader(handle)[0]
    return shapes


def fetch(url: str = PINNED_URL, *, timeout_s: float = 60.0, max_bytes: int = MAX_DOWNLOAD_BYTES,
          log: Callable[[str], None] = print) -> Path:
    """Download the upstream repository archive, verify the model it holds, and install it."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url} is not an http(s) address")
    target_dir = models_dir()
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot create {target_dir}: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".fetch-") as scratch:
        archive = Path(scratch) / "ICT-FaceKit.zip"
        log(f"downloading {url}")
        size = _download(url, archive, timeout_s, max_bytes, log)
        log(f"downloaded {size / 1e6:.1f} MB; converting and verifying")
        try:
            return install(archive, verify_pinned=True, log=log, label=url)
        except InstallError as exc:
            raise InstallError(f"what {url} sent is not the pinned model: {exc}") from None


def _download(url: str, path: Path, timeout_s: float, max_bytes: int, log: Callable[[str], None] = print) -> int:
    """Stream ``url`` into ``path``; ``timeout_s`` bounds each wait for data and, x30, the whole download.
    Logs ``NN% (x of y MB)`` every 5 % when the size is declared (the add-on's progress bar reads it)."""
    deadline = time.monotonic() + 30 * timeout_s
    received, reported = 0, 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as out:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise FetchError(f"{url} is {declared} bytes, more than the {max_bytes}-byte limit")
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > max_bytes:
                    raise FetchError(f"{url} sent more than the {max_bytes}-byte limit")
                if time.monotonic() > deadline:
                    raise FetchError(f"download of {url} took longer than {30 * timeout_s:.0f} s")
                out.write(chunk)
                if declared and received * 20 // declared > reported:
                    reported = received * 20 // declared
                    log(f"downloading {5 * reported}% ({received / 1e6:.1f} of {declared / 1e6:.1f} MB)")
    except urllib.error.HTTPError as exc:
        raise FetchError(f"download failed: HTTP {exc.code} {exc.reason} from {url}") from None
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, TimeoutError) else exc.reason
        raise FetchError(f"cannot download {url}: {reason}") from None
    except TimeoutError:
        raise FetchError(f"download of {url} stalled: no data for {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:  # connection reset or cut short, disk full
        raise FetchError(f"download of {url} failed: {getattr(exc, 'strerror', None) or exc!r}") from None
    return received
