"""The morphable head model as arrays: ``X = vertices + id_coeffs @ id_deltas + exp_weights @ exp_deltas``.

One in-memory form for every user of the model (converter, fit, texture, evaluation). The file
format is the converted ``.npz`` whose keys are listed in ``REQUIRED``; units are metres, the
model's own frame is +Y up, +Z out of the face, +X toward the subject's left.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REQUIRED = ("vertices", "faces", "face_poly", "face_material", "material_names", "uv", "face_uv",
            "vertex_part", "part_names", "face_mask", "face_full_mask", "iris_mask", "landmarks68",
            "id_deltas", "exp_deltas", "exp_names")


class ModelFileError(ValueError):
    """A model file that is missing, unreadable, lacks arrays or holds unusable ones: the message says which."""


def check_arrays(a: dict[str, np.ndarray]) -> list[str]:
    """What is wrong with a model's arrays (empty: nothing): kinds, shapes, finite values, index ranges.

    Checked wherever a model is made, at install and at every load, so a damaged or hostile file is
    refused with its reason instead of answering ``internal`` to every request (NaN vertices, inf
    deltas) or stopping the server (float faces, an out-of-range material)."""
    problems = []

    def need(ok: bool, text: str) -> bool:
        if not ok:
            problems.append(text)
        return ok

    def kind(name: str, kinds: str, ndim: int) -> bool:
        array = a[name]
        return need(array.dtype.kind in kinds and array.ndim == ndim and array.size > 0,
                    f"{name} must be a non-empty {ndim}-D array of {_KINDS[kinds]} (it is {array.dtype} {array.shape})")

    for name, kinds, ndim in _LAYOUT:
        kind(name, kinds, ndim)
    if problems:
        return problems
    v, f, t = len(a["vertices"]), len(a["faces"]), len(a["uv"])
    for name, shape in (("vertices", (v, 3)), ("faces", (f, 3)), ("uv", (t, 2)), ("face_uv", (f, 3)),
                        ("face_poly", (f,)), ("face_material", (f,)), ("vertex_part", (v,)), ("face_mask", (v,)),
                        ("face_full_mask", (v,)), ("iris_mask", (v,)), ("landmarks68", (68,)),
                        ("id_deltas", (len(a["id_deltas"]), v, 3)), ("exp_deltas", (len(a["exp_names"]), v, 3))):
        need(a[name].shape == shape, f"{name} has shape {a[name].shape}, expected {shape}")
    if problems:
        return problems
    for name, count in (("faces", v), ("face_uv", t), ("landmarks68", v), ("face_material", len(a["material_names"])),
                        ("vertex_part", len(a["part_names"]))):
        need(int(a[name].min()) >= 0 and int(a[name].max()) < count, f"{name} indexes outside [0, {count})")
    need(int(a["face_poly"].min()) >= 0, "face_poly has negative polygon numbers")
    for name in ("vertices", "uv", "id_deltas", "exp_deltas"):
        need(bool(np.isfinite(a[name]).all()), f"{name} holds NaN or infinite values")
    return problems


_KINDS = {"f": "floats", "iu": "integers", "b": "booleans", "U": "strings"}
_LAYOUT = (("vertices", "f", 2), ("faces", "iu", 2), ("face_poly", "iu", 1), ("face_material", "iu", 1),
           ("material_names", "U", 1), ("uv", "f", 2), ("face_uv", "iu", 2), ("vertex_part", "iu", 1),
           ("part_names", "U", 1), ("face_mask", "b", 1), ("face_full_mask", "b", 1), ("iris_mask", "b", 1),
           ("landmarks68", "iu", 1), ("id_deltas", "f", 3), ("exp_deltas", "f", 3), ("exp_names", "U", 1))


@dataclass(frozen=True, eq=False)  # identity equality: models are compared and cached by object
class HeadModel:
    vertices: np.ndarray        # (V, 3) float32 neutral head, metres
    faces: np.ndarray           # (F, 3) int32 triangles (upstream quads split along 0-2)
    face_poly: np.ndarray       # (F,) int32 upstream polygon of each triangle (rebuilds quads)
    face_material: np.ndarray   # (F,) uint8 index into material_names
    material_names: tuple
    uv: np.ndarray              # (T, 2) float32 upstream texture coordinates (u spans 7 tiles)
    face_uv: np.ndarray         # (F, 3) int32 per-corner index into uv
    vertex_part: np.ndarray     # (V,) uint8 index into part_names
    part_names: tuple
    face_mask: np.ndarray       # (V,) bool frontal skin (upstream narrow face area)
    face_full_mask: np.ndarray  # (V,) bool face incl. ears and front neck
    iris_mask: np.ndarray       # (V,) bool
    landmarks68: np.ndarray     # (68,) int32 Multi-PIE landmark vertices
    id_deltas: np.ndarray       # (100, V, 3) float16 identity modes, coefficients ~ N(0, 1)
    exp_deltas: np.ndarray      # (53, V, 3) float16 ARKit-named expression deltas, weights in [0, 1]
    exp_names: tuple
    info: dict

    @classmethod
    def load(cls, path: str | Path) -> "HeadModel":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [key for key in REQUIRED if key not in data.files]
                if missing:
                    raise ModelFileError(f"{path} is not a FaceForge head model: missing {', '.join(missing)}")
                return cls.from_arrays({key: data[key] for key in (*REQUIRED, "info") if key in data.files})
        except (OSError, ValueError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"cannot read head model {path}: {exc}") from None

    @classmethod
    def from_arrays(cls, arrays: dict) -> "HeadModel":
        """The model from the file's arrays (``REQUIRED`` keys, optional ``info`` JSON string)."""
        fields = {key: np.asarray(arrays[key]) for key in REQUIRED}
        problems = check_arrays(fields)
        if problems:
            raise ModelFileError(f"not a usable head model: {'; '.join(problems)}")
        for key in ("material_names", "part_names", "exp_names"):
            fields[key] = tuple(str(name) for name in fields[key])
        try:
            info = json.loads(str(arrays["info"])) if "info" in arrays else {}
        except ValueError:
            raise ModelFileError("not a usable head model: its info is not JSON") from None
        return cls(info=info if isinstance(info, dict) else {}, **fields)

    @property
    def vertex_count(self) -> int:
        return len(self.vertices)

    def shape(self, id_coeffs: np.ndarray | None = None, exp_weights: np.ndarray | None = None) -> np.ndarray:
        """Vertices (V, 3) float32 for the given coefficients (missing ones are zero)."""
        out = self.vertices.astype(np.float32).copy()
        if id_coeffs is not None:
            out += np.tensordot(np.asarray(id_coeffs, np.float32), self.id_deltas[:len(id_coeffs)].astype(np.float32), 1)
        if exp_weights is not None:
            out += np.tensordot(np.asarray(exp_weights, np.float32), self.exp_deltas[:len(exp_weights)].astype(np.float32), 1)
        return out
