"""Convert the upstream ICT-FaceKit ``FaceXModel/`` OBJ files into the one compact ``.npz`` that
``HeadModel.load`` reads (metres, float16 deltas, quads split along 0-2; keys as in ``model.REQUIRED``).

The OBJ reader is our own, a few lines long, on purpose: the model's vertex *i* is an anatomical
point, so the ``v`` records must come back exactly in file order, one per record. General mesh
libraries do not promise that (trimesh merges duplicate positions and splits vertices at UV seams;
Open3D and Blender's importer may reorder or weld), and the eyelid, lacrimal and eyelash shells
do have coincident vertices. Identity and expression files share the neutral's topology, so only
their ``v`` records are read and their count is checked.
"""
from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..source_files import check_source, read_small_text

NEUTRAL = "generic_neutral_mesh.obj"
INDICES = "vertex_indices.json"
IDENTITY_COUNT = 100
VERTEX_COUNT = 26719
CM_TO_M = 100.0
MAX_OBJ_BYTES = 32 * 1024 * 1024  # upstream OBJs are ~2.6 MB; refuse zip bombs and stray giants
EXPRESSION_NAMES = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R",
    "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L",
    "mouthStretch_R", "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R")
# First vertex of each geometry part (upstream README's vertex ranges); a part ends where the next begins.
PART_STARTS = (
    ("face", 0), ("head_neck", 9409), ("mouth_socket", 11248), ("eye_socket_left", 13294),
    ("eye_socket_right", 13678), ("gums_tongue", 14062), ("teeth", 17039), ("eyeball_left", 21451),
    ("eyeball_right", 23021), ("lacrimal_fluid_left", 24591), ("lacrimal_fluid_right", 24795),
    ("eye_blend_left", 24999), ("eye_blend_right", 25023), ("eye_occlusion_left", 25047),
    ("eye_occlusion_right", 25199), ("eyelashes_left", 25351), ("eyelashes_right", 26035))
NARROW_FACE_END = 6706  # upstream "narrow face area": vertices 0..6705, frontal skin only
IRIS_MATERIALS = ("M_IrisLeft", "M_IrisRight")
KEYS = ("vertices", "faces", "face_poly", "face_material", "material_names", "uv", "face_uv", "vertex_uv",
        "vertex_part", "part_names", "face_mask", "face_full_mask", "iris_mask", "landmarks68", "id_deltas",
        "id_names", "exp_deltas", "exp_names", "info")  # the file's keys, in the shared model's order
INFO = {
    "source": "github.com/ICT-VGL/ICT-FaceKit FaceXModel (ICT Face Model Light)",
    "license": "MIT, Copyright (c) 2020 USC Institute for Creative Technologies",
    "units": "meters (upstream OBJs are centimeters, divided by 100)",
    "frame": "+Y up, +Z out of the face (face looks toward +Z), +X to the subject's left",
    "model": "vertices + id_coeffs @ id_deltas + exp_weights @ exp_deltas; id_coeffs ~ N(0, 1) per mode "
             "(upstream convention), exp_weights in [0, 1] (ARKit-style)",
    "face_mask": "README 'Narrow face area' vertices [0:6705] (frontal skin, no ears/neck/back of head)",
    "faces": "quads fan-triangulated along the 0-2 diagonal; face_poly = source polygon index",
}


class ConversionError(ValueError):
    """The source is not a complete, readable ICT-FaceKit model: the message says what is wrong."""


def identity_files() -> list[str]:
    return [f"identity{i:03d}.obj" for i in range(IDENTITY_COUNT)]


def required_files() -> list[str]:
    return [NEUTRAL, INDICES, *identity_files(), *(f"{name}.obj" for name in EXPRESSION_NAMES)]


class FolderSource:
    """The upstream ``FaceXModel/`` folder (or a checkout that contains one)."""

    def __init__(self, folder: Path):
        self.folder = folder / "FaceXModel" if (folder / "FaceXModel" / NEUTRAL).exists() else folder
        self.label = str(self.folder)

    def names(self) -> set[str]:
        return {p.name for p in self.folder.iterdir() if p.is_file()}

    def read(self, name: str) -> bytes:
        path = self.folder / name
        check_source(path, MAX_OBJ_BYTES, ConversionError, "upstream model file")  # no FIFO, device, giant
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConversionError(f"cannot read {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        pass

    def licence_text(self) -> str | None:
        for path in (self.folder / "LICENSE", self.folder.parent / "LICENSE"):
            text = read_small_text(path)  # never through a link: it could point at anyone's file
            if text is not None:
                return text
        return None


class ZipSource:
    """A zip of the upstream repository (GitHub layout ``ICT-FaceKit-<commit>/FaceXModel/...``)."""

    def __init__(self, archive: zipfile.ZipFile, label: str):
        self.archive = archive
        self.label = label
        neutral = [n for n in archive.namelist() if n == f"FaceXModel/{NEUTRAL}" or n.endswith(f"/FaceXModel/{NEUTRAL}")]
        if not neutral:
            raise ConversionError(f"{label} has no FaceXModel/{NEUTRAL}: not a zip of the ICT-FaceKit repository")
        self.prefix = neutral[0][:-len(NEUTRAL)]

    def names(self) -> set[str]:
        return {n[len(self.prefix):] for n in self.archive.namelist()
                if n.startswith(self.prefix) and "/" not in n[len(self.prefix):]}

    def read(self, name: str) -> bytes:
        entry = self.archive.getinfo(self.prefix + name)
        if entry.file_size > MAX_OBJ_BYTES:
            raise ConversionError(f"{self.label}: {name} unpacks to {entry.file_size} bytes: not an upstream model file")
        try:
            return self.archive.read(entry)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ConversionError(f"{self.label}: {name} is damaged ({exc})") from None

    def close(self) -> None:
        self.archive.close()

    def licence_text(self) -> str | None:
        root = self.prefix[:-len("FaceXModel/")]
        for name in (self.prefix + "LICENSE", root + "LICENSE"):
            if name in self.archive.namelist():
                return self.archive.read(name).decode("utf-8", "replace")
        return None


def parse_vertices(data: bytes, label: str) -> np.ndarray:
    """The ``v`` records of an OBJ, in file order, as (V, 3) float64 (upstream centimetres).

    Upstream files keep their ``v`` records in one block of ``v x y z`` lines: that block is parsed
    in one numpy call (150 files take seconds otherwise); anything else is parsed record by record.
    """
    data = b"\n" + data
    count = data.count(b"\nv ")
    start, last = data.find(b"\nv "), data.rfind(b"\nv ")
    end = data.find(b"\n", last + 1)
    block = data[start:end if end >= 0 else len(data)].replace(b"\nv ", b"\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy warns where it stops early: caught below
        values = np.fromstring(block, sep=" ") if count else np.empty(0)
    if len(values) != 3 * count or b"v" in block:
        records = [line[2:].split()[:3] for line in data.split(b"\n") if line.startswith(b"v ")]
        try:
            values = np.array([[float(x) for x in r] for r in records if len(r) == 3], dtype=np.float64)
        except ValueError as exc:
            raise ConversionError(f"{label}: malformed vertex record ({exc})") from None
        if len(values) != len(records):
            raise ConversionError(f"{label}: a vertex record has fewer than 3 coordinates")
    if not np.isfinite(values).all():
        raise ConversionError(f"{label}: a vertex record is not a finite number")
    return values.reshape(-1, 3)


def parse_topology(data: bytes, label: str) -> dict:
    """Texture coordinates and polygons (fan-split into triangles) of the neutral OBJ, in file order."""
    uv, tri_v, tri_t, tri_poly, tri_mat, materials = [], [], [], [], [], []
    poly = 0
    try:
        for line in data.split(b"\n"):
            if line.startswith(b"vt "):
                uv.append(line.split()[1:3])
            elif line.startswith(b"usemtl "):
                materials.append(line.split()[1].decode())
            elif line.startswith(b"f "):
                corners = [c.split(b"/") for c in line.split()[1:]]
                vs = [int(c[0]) - 1 for c in corners]
                ts = [int(c[1]) - 1 for c in corners]
                for k in range(1, len(corners) - 1):  # split along 0-2 for quads
                    tri_v.append((vs[0], vs[k], vs[k + 1]))
                    tri_t.append((ts[0], ts[k], ts[k + 1]))
                    tri_poly.append(poly)
                    tri_mat.append(len(materials) - 1)
                poly += 1
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{label}: malformed face or material record ({exc})") from None
    if not tri_v or not materials or min(tri_mat) < 0:
        raise ConversionError(f"{label}: no faces with materials and texture coordinates")
    return {"uv": np.array(uv, dtype=np.float64).astype(np.float32), "faces": np.array(tri_v, np.int32),
            "face_uv": np.array(tri_t, np.int32), "face_poly": np.array(tri_poly, np.int32),
            "face_material": np.array(tri_mat, np.uint8), "material_names": np.array(materials)}


def open_source(path: Path) -> FolderSource | ZipSource:
    """A folder or repository zip as a model source; refuses anything else with a clear message."""
    if path.is_dir():
        return FolderSource(path)
    if zipfile.is_zipfile(path):
        try:
            return ZipSource(zipfile.ZipFile(path), str(path))
        except (zipfile.BadZipFile, OSError) as exc:
            raise ConversionError(f"{path} is a damaged zip ({exc})") from None
    raise ConversionError(f"{path} is neither a FaceXModel folder, a repository zip nor a converted .npz")


def check_complete(source) -> None:
    names = source.names()
    groups = {"base": [NEUTRAL, INDICES], "identity": identity_files(),
              "expression": [f"{name}.obj" for name in EXPRESSION_NAMES]}
    missing = {kind: [n for n in files if n not in names] for kind, files in groups.items()}
    parts = [f"{len(files)} {kind} file{'s' * (len(files) > 1)} ({', '.join(files[:6])}{', ...' * (len(files) > 6)})"
             for kind, files in missing.items() if files]
    if parts:
        raise ConversionError(f"{source.label} is incomplete, missing {'; '.join(parts)}: "
                              "use the whole FaceXModel folder of ICT-FaceKit")


def convert_source(source) -> dict[str, np.ndarray]:
    """All model arrays from a complete source, exactly as ``HeadModel`` expects them."""
    check_complete(source)
    neutral_data = source.read(NEUTRAL)
    neutral_cm = parse_vertices(neutral_data, NEUTRAL)
    if len(neutral_cm) != VERTEX_COUNT:
        raise ConversionError(f"{NEUTRAL} has {len(neutral_cm)} vertices, ICT-FaceKit has {VERTEX_COUNT}")
    arrays = parse_topology(neutral_data, NEUTRAL)
    if arrays["faces"].max() >= VERTEX_COUNT or arrays["face_uv"].max() >= len(arrays["uv"]):
        raise ConversionError(f"{NEUTRAL}: a face refers to a vertex or texture coordinate that does not exist")
    arrays["vertices"] = (neutral_cm / CM_TO_M).astype(np.float32)
    arrays.update(_deltas(source, neutral_cm))
    arrays.update(_labels(arrays, source))
    arrays["info"] = np.array(json.dumps(INFO, indent=1))
    return arrays


def _deltas(source, neutral_cm: np.ndarray) -> dict[str, np.ndarray]:
    names = {"id": [n[:-4] for n in identity_files()], "exp": list(EXPRESSION_NAMES)}
    out = {}
    for kind, stems in names.items():
        deltas = np.empty((len(stems), VERTEX_COUNT, 3), np.float16)
        for k, stem in enumerate(stems):
            shape = parse_vertices(source.read(f"{stem}.obj"), f"{stem}.obj")
            if shape.shape != neutral_cm.shape:
                raise ConversionError(f"{stem}.obj has {len(shape)} vertices, the neutral mesh {len(neutral_cm)}")
            deltas[k] = (shape / CM_TO_M - neutral_cm / CM_TO_M).astype(np.float16)
        out[f"{kind}_deltas"] = deltas
        out[f"{kind}_names"] = np.array(stems)
    return out


def _labels(arrays: dict, source) -> dict[str, np.ndarray]:
    """Per-vertex part, masks, first-corner UV and the 68 landmarks."""
    starts = [start for _, start in PART_STARTS] + [VERTEX_COUNT]
    vertex_part = np.repeat(np.arange(len(PART_STARTS), dtype=np.uint8), np.diff(starts))
    names = [str(n) for n in arrays["material_names"]]
    iris = np.zeros(VERTEX_COUNT, bool)
    iris_faces = np.isin(arrays["face_material"], [names.index(m) for m in IRIS_MATERIALS if m in names])
    iris[arrays["faces"][iris_faces].ravel()] = True
    corners_v, corners_t = arrays["faces"].ravel(), arrays["face_uv"].ravel()
    _, first = np.unique(corners_v, return_index=True)
    vertex_uv = np.zeros((VERTEX_COUNT, 2), np.float32)
    vertex_uv[corners_v[first]] = arrays["uv"][corners_t[first]]
    try:
        landmarks = np.array(json.loads(source.read(INDICES))["idx_to_landmark_verts"], np.int32)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"{INDICES}: no readable idx_to_landmark_verts ({exc})") from None
    if landmarks.shape != (68,) or landmarks.min() < 0 or landmarks.max() >= VERTEX_COUNT:
        raise ConversionError(f"{INDICES}: idx_to_landmark_verts is not 68 vertex indices")
    return {"vertex_uv": vertex_uv, "vertex_part": vertex_part, "part_names": np.array([n for n, _ in PART_STARTS]),
            "face_mask": np.arange(VERTEX_COUNT) < NARROW_FACE_END, "face_full_mask": vertex_part == 0,
            "iris_mask": iris, "landmarks68": landmarks}


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise ConversionError(f"cannot write {path}: arrays missing {', '.join(missing)}")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:  # np.load reads it as .npz
        for key in KEYS:  # level 1: 3% larger than numpy's default level, half the time
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arrays[key]), allow_pickle=False)
