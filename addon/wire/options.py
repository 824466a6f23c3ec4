"""Every reconstruction option, declared once: name, type, default, range, help and which side uses it.

Everything else is derived from ``OPTIONS``: the server's ``ReconstructionConfig`` dataclass, the
request validation on the server's I/O thread, the Blender panel's properties, and the command
lines of ``python -m inference_server`` and ``scripts/batch.py``. Pure Python (no numpy, pyzmq or
bpy), so Blender, the batch and the server all import it.

Sides:
- ``SERVER``: sent with a request, applied by the server (ranges bound what a request may cost);
- ``LIMIT``: a server operator's ceiling; a request may lower it, never raise it;
- ``BUILD``: applied in Blender when the reply becomes objects (modifier settings).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, make_dataclass, replace
from typing import Any, Callable, Iterable, Mapping

from .errors import ErrorCode, ProtocolError

SERVER, LIMIT, BUILD = "server", "limit", "build"
MAX_FACE_INDEX = 99


@dataclass(frozen=True)
class Option:
    name: str
    kind: type                      # int, float, str or bool
    default: Any
    help: str
    side: str = SERVER
    minimum: float | None = None
    maximum: float | None = None
    soft_maximum: float | None = None   # the panel's slider end; typing may go up to ``maximum``
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None  # extra rule: returns why a value is wrong, or None
    label: str = ""                 # the panel's name; derived from ``name`` when empty
    unit: str = ""                  # "LENGTH" for distances in metres (panel shows scene units)
    panel: bool = False             # shown in the add-on's panel
    geometry: str = ""              # "face" or "head": the one geometry it changes ("" = both)
    cli_aliases: tuple = ()         # extra command-line flags kept for users' scripts

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"[{self.minimum:g}, {self.maximum:g}]"
        return self.kind.__name__

    def validate(self, value: Any) -> Any:
        """The value if it is exactly of this option's type and in range, else ``ProtocolError(bad_request)``.

        Strict on purpose: JSON ``true`` is not 1, ``8.9`` is not an integer, infinities and NaN are
        refused, and strings are matched exactly."""
        problem = self._problem(value)
        if problem:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"option {self.name!r} {problem}")
        return float(value) if self.kind is float else value

    def _problem(self, value: Any) -> str | None:
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind is str:
            if not isinstance(value, str):
                return f"must be a string ({self.range_text()})"
            if value in self.choices:
                return None
            if self.check:
                return self.check(value)
            return f"must be one of {self.range_text()}, not {value[:40]!r}" if self.choices else None
        else:
            numeric = (int,) if self.kind is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, numeric):
                return f"must be {'an integer' if self.kind is int else 'a number'} in {self.range_text()}"
            if not math.isfinite(value):
                return f"must be finite, in {self.range_text()}"
            if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
                return f"is {value:g}, outside {self.range_text()}"
        return None if self.kind is str or self.check is None else self.check(value)


def _face_index(value: str) -> str | None:
    if value.isascii() and value.isdigit() and int(value) <= MAX_FACE_INDEX:
        return None
    return f"must be 'largest', 'all' or a face index 0..{MAX_FACE_INDEX}, not {value[:40]!r}"


def _installed_name(value: str) -> str | None:
    """A request names an installed checkpoint, never a file: it must not make the server read
    arbitrary paths. (Whether the name is installed is the server's to say: ``no_model``.)"""
    if value == "" or (len(value) <= 100 and value.isascii() and value[0].isalnum()
                       and all(c.isalnum() or c in "._-" for c in value)):
        return None
    return (f"must be the name of an installed depth checkpoint (letters, digits, '.', '_', '-'), not "
            f"{value[:40]!r}; paths are refused: install the file with `python -m inference_server model install "
            "CHECKPOINT`, or start the server with `serve --depth-model PATH`")


def frame_range(text: str) -> tuple[int, int | None]:
    """A video's 'START:STOP' frame numbers (0-based, STOP excluded; either may be empty) -> (start, stop);
    ``ValueError`` saying how to write one."""
    if not text:
        return 0, None
    start, sep, stop = text.partition(":")
    try:
        first = int(start) if start.strip() else 0
        last = int(stop) if sep and stop.strip() else None
    except ValueError:
        raise ValueError(f"frame range {text[:40]!r}: use START:STOP frame numbers, e.g. 0:300") from None
    if first < 0 or (last is not None and last <= first):
        raise ValueError(f"frame range {text[:40]!r}: START must be >= 0 and STOP after it")
    return first, last


def _frame_range_problem(value: str) -> str | None:
    try:
        frame_range(value)
    except ValueError as exc:
        return f"is not a frame range ({exc})"
    return None


OPTIONS: tuple[Option, ...] = (
    Option("face", str, "largest", "which face: largest, all, or an index by size (0 = largest)",
           choices=("largest", "all"), check=_face_index),
    Option("geometry", str, "auto", "head: the morphable head model fitted to the photo (full head, fixed "
           "topology, expression shape keys); face: the model-free face surface; auto: head when the server has "
           "the model installed", choices=("auto", "head", "face"), panel=True),
    Option("resolution", int, 100, "mesh grid cells across the face width (100 gives about 9k vertices)",
           minimum=8, maximum=400, soft_maximum=300, panel=True, geometry="face"),
    Option("depth_size", int, 256, "side of the returned depth map in pixels", minimum=16, maximum=1024),
    Option("texture_size", int, 512, "side of the aligned photo crop used as texture, pixels",
           minimum=64, maximum=2048),
    Option("crop_margin", float, 0.3, "border around the detected face box, as a fraction of its size",
           minimum=0.0, maximum=1.0),
    Option("contour_inset", float, 0.015, "pull the face outline inward (fraction of face width) to keep "
           "background off the rim", minimum=0.0, maximum=0.1),
    Option("taubin_passes", int, 0, "Taubin smoothing passes on the server's mesh (Blender smooths with a "
           "modifier instead)", minimum=0, maximum=50),
    Option("detail_sigma", float, 3.0, "low-pass radius (texture pixels) of the detail map's high-pass",
           minimum=0.5, maximum=20.0),
    Option("depth_backend", str, "landmarks", "face geometry: landmarks = the face's depth from its landmarks "
           "alone; cues (experimental) = FaceForge's own shape network (shipped, offline) reshapes the landmark "
           "surface's nose, cheeks, brow and chin (nearer the truth on renders of frontal faces, but on real "
           "photos it flattens the nose and adds lumps: see the README); network = an installed depth network (MiDaS / DPT / Depth Anything V2) on the "
           "photo, fused with the landmark surface (its shape, the network's detail); face mode only: with "
           "geometry auto it chooses face mode",
           choices=("landmarks", "cues", "network"), label="Depth", panel=True, geometry="face"),
    Option("depth_model", str, "", "depth_backend network: the name of an installed depth checkpoint (`python -m "
           "inference_server model install CHECKPOINT`) or an architecture id; empty = the server's own "
           "(`serve --depth-model`). A path is refused: a request cannot make the server read files",
           check=_installed_name, label="Depth Model", panel=True, geometry="face"),
    Option("depth_fuse_weight", float, 1.0, "depth_backend network or cues: share of the network in the fused "
           "depth's detail (0 = the landmark surface, 1 = all detail above the landmarks' scale from the network)",
           minimum=0.0, maximum=1.0, label="Network Detail", panel=True, geometry="face"),
    Option("refine", str, "light", "photometric refinement of the head: light (default) = SH lighting and a "
           "de-lit albedo texture, so a side light is not baked into the skin; full = also shape from shading, "
           "added to the head's vertices (about 2 s more per face on 2 CPU threads); off = the photo "
           "projected as it is, shading and all", choices=("off", "light", "full"),
           panel=True, geometry="head"),
    Option("shape_cues", str, "auto", "what shapes the fitted head: network = FaceMesh's 478 points and the "
           "project's own cues network's dense correspondences (up to 1,500) from the photo (on renders with known shape "
           "21-28 % nearer the true surface than the mean head, against 8-16 % for landmarks alone; see the "
           "README's Likeness section); landmarks = the 478 points alone; auto = network when its weights "
           "are there, else landmarks",
           choices=("auto", "landmarks", "network"), label="Shape Cues", panel=True, geometry="head"),
    Option("detect_max_side", int, 640, "photos are downscaled to this side for face detection",
           minimum=64, maximum=2048),
    Option("min_face_fraction", float, 0.05, "smallest face searched for, as a fraction of the photo's longer "
           "side (smaller is slower)", minimum=0.01, maximum=1.0),
    Option("min_face_score", float, 0.9, "detector confidence a face needs", minimum=0.5, maximum=0.999),
    Option("max_pixels", int, 40_000_000, "refuse larger photos before decoding them", side=LIMIT,
           minimum=1, maximum=200_000_000),
    Option("max_photos", int, 6, "most photos of one person a request may carry (head mode fits one head to all)",
           side=LIMIT, minimum=1, maximum=32),
    Option("max_video_frames", int, 900, "most frames of a video a request may use (900: 30 s at 30 fps; "
           "a video's request also has the server's time limit per request)", side=LIMIT, minimum=1, maximum=1_000_000),
    Option("video_frames", str, "", "a video's frames to use: START:STOP (0-based, STOP excluded; empty = all, "
           "up to max_video_frames)", check=_frame_range_problem),
    Option("photo_lighting", bool, False, "head mode with refine light or full: light the scene like the photo -- "
           "the fitted lighting becomes the world's environment (this replaces the scene's world)", side=BUILD,
           label="Photo Lighting", panel=True, geometry="head"),
    Option("video_camera", bool, True, "a video's head: add a camera like the video's, the video as its "
           "background, to check the fit frame by frame (sets the render resolution to the video's)", side=BUILD,
           label="Video Camera", panel=True, geometry="head"),
    Option("neutral_expression", bool, False, "head mode: build the head with every expression shape key at 0 "
           "(the fitted weights stay in the metadata)", side=BUILD, label="Neutral Expression", panel=True,
           geometry="head"),
    Option("smooth_iterations", int, 5, "Laplacian Smooth modifier iterations (0 = off)", side=BUILD,
           minimum=0, maximum=200, soft_maximum=50, label="Smoothing", panel=True, cli_aliases=("--smooth",)),
    Option("smooth_factor", float, 0.5, "Laplacian Smooth modifier strength per iteration", side=BUILD,
           minimum=0.0, maximum=10.0, soft_maximum=2.0, label="Smoothing Factor", panel=True),
    Option("subdivision_levels", int, 1, "Subdivision Surface levels before the detail displacement", side=BUILD,
           minimum=0, maximum=4, soft_maximum=3, label="Subdivisions", panel=True, cli_aliases=("--subdivision",)),
    Option("detail_strength", float, 0.002, "displacement in metres per unit of the detail map", side=BUILD,
           minimum=-0.05, maximum=0.05, label="Detail Strength", unit="LENGTH", panel=True,
           cli_aliases=("--detail",)),
)

BY_NAME = {option.name: option for option in OPTIONS}


def on_side(*sides: str) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if option.side in sides)


def _validated_params(self, params: Mapping[str, Any]):
    """A copy with a request's options applied; unknown, mistyped, out-of-range or ceiling-raising
    options raise ``ProtocolError(bad_request)`` naming the option and its allowed values."""
    if not isinstance(params, Mapping):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'params' must be a JSON object of options")
    known = {f.name for f in fields(self)}
    changes = {}
    for key, value in params.items():
        if key not in known:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"unknown option {str(key)[:40]!r}; known: {', '.join(sorted(known))}")
        option = BY_NAME[key]
        changes[key] = option.validate(value)
        if option.side == LIMIT and changes[key] > getattr(self, key):
            raise ProtocolError(ErrorCode.TOO_LARGE, f"option {key!r}={value} exceeds this server's limit "
                                                     f"{getattr(self, key)}; a request may only lower it")
    return replace(self, **changes)


def config_class(name: str, options: Iterable[Option], doc: str, module: str | None = None) -> type:
    """A frozen dataclass with one typed field per option (defaults from the schema) and ``with_params``.
    ``module``: where the class is bound to ``name`` (its instances then pickle, e.g. to a worker process)."""
    cls = make_dataclass(name, [(o.name, o.kind, field(default=o.default)) for o in options], frozen=True,
                         namespace={"with_params": _validated_params, "__doc__": doc})
    if module:
        cls.__module__ = module
    return cls


def as_dict(config) -> dict:
    return {f.name: getattr(config, f.name) for f in fields(config)}


# ----------------------------------------------------------------------------------------------
# Command lines

def _argument_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = option.kind(text) if option.kind is not str else text.strip().lower() if option.choices else text.strip()
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {option.kind.__name__} in {option.range_text()}") from None
        try:
            return option.validate(value)
        except ProtocolError as err:
            raise argparse.ArgumentTypeError(err.message.split(" ", 2)[2]) from None
    parse.__name__ = option.kind.__name__  # argparse names the type in its messages
    return parse


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option], *, title: str = "") -> None:
    """One flag per option (``--resolution``, ``--smooth-iterations``...). The default is None: options
    not given are not sent, so the server's (or the builder's) own defaults apply."""
    group = parser.add_argument_group(title) if title else parser
    for option in options:
        text = option.help.replace("%", "%%")   # argparse formats help with %: a literal % would break --help
        if option.kind is bool:
            group.add_argument(option.flag, *option.cli_aliases, dest=option.name, default=None,
                               action=argparse.BooleanOptionalAction, help=f"{text} (default {option.default})")
        else:
            group.add_argument(option.flag, *option.cli_aliases, dest=option.name, default=None,
                               type=_argument_type(option), metavar=option.kind.__name__.upper(),
                               help=f"{text}; {option.range_text()}, default {option.default}"
                               if option.kind is not str else f"{text}; default {option.default}")


def given(namespace: argparse.Namespace, options: Iterable[Option]) -> dict:
    """The options a command line actually set."""
    return {o.name: getattr(namespace, o.name) for o in options if getattr(namespace, o.name, None) is not None}
