"""Head-model fit against heads with known shape, expression and pose.

    .venv/bin/python benchmarks/head_fit_eval.py [--subjects 16] [--first-seed 0] [--renderer raster|cycles] [--cues CKPT [CKPT ...]] [--mirror-average on|off|both] [--save-renders DIR]

Each subject is an ICT-FaceKit head with random identity (N(0, 1)) and a few expressions, in two
kinds: ``model`` (exactly representable) and ``beyond`` (the same plus a smooth random displacement
of a few millimetres along the normals, which no coefficient vector can reproduce — fitting a model
to its own renders flatters it). Each is rendered with the project's rasteriser at a frontal and a
turned pose (``--renderer cycles``: by Blender's Cycles instead, a renderer the cues network never
trained on), run through the real landmark chain (MTCNN -> crop -> FaceMesh) and fitted three ways:
landmarks alone, + the cues network (each checkpoint given: ``cues``, ``cues2``, ... on the same renders
and landmarks), + perfect dense cues from the true head (the fit's ceiling). Reported:

- ``pose_deg``: angle between the fitted and the true head rotation;
- ``landmark_mm``: mean 3D distance of the 478 landmark points, canonical heads aligned by a
  similarity transform (the photo cannot tell a big far head from a small near one);
- ``surface_mm``: mean distance from the true face surface (vertices of the face region) to the
  fitted face surface after the same alignment (scan-to-mesh);
- ``pair_mm``: frontal vs turned fit of the same subject, canonical heads compared the same way;
- ``mean_head_surface_mm``: ``surface_mm`` of the model's mean head (no fit), for reference;
- ``fit_ms`` / ``fit_cpu_ms``: the fit alone (landmarks given), wall clock and process CPU time,
  torch on 2 threads; and the rasteriser's time for the full head (52k triangles) at 512 x 512.

Needs the shared ICT-FaceKit npz (test data, never part of the product).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CAMERA_FOCAL, CAMERA_SIZE, DISTANCE_M = 1500.0, (640, 640), 0.85
EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "browInnerUp_L", "eyeBlink_L", "eyeBlink_R",
               "mouthFunnel", "browDown_L", "browDown_R", "cheekSquint_L")


def shared_model_path() -> Path:
    """The shared ICT-FaceKit npz (test/evaluation data, never part of the product)."""
    from benchmarks.ict_eval import ICT_MODEL

    return ICT_MODEL


def evaluation_model():
    """(model, landmark table) from the shared npz, torch on 2 threads; exits with a message without it."""
    import torch

    from inference_server.head.correspondence import LandmarkTable
    from inference_server.head.model import HeadModel

    torch.set_num_threads(2)
    path = shared_model_path()
    if not path.exists():
        sys.exit(f"error: no ICT-FaceKit model at {path}")
    return HeadModel.load(path), LandmarkTable.load()


@dataclass(frozen=True)
class Subject:
    id_coeffs: np.ndarray
    exp_weights: np.ndarray
    displacement: np.ndarray | None     # (V, 3) metres added to the model's shape ("beyond" kind)
    pose: tuple[float, float, float]    # yaw, pitch, roll in degrees

    def canonical(self, model) -> np.ndarray:
        shape = model.shape(self.id_coeffs, self.exp_weights)
        return shape if self.displacement is None else shape + self.displacement

    @property
    def rotation(self) -> np.ndarray:
        from inference_server.head.camera import head_rotation

        return head_rotation(*self.pose)

    @property
    def translation(self) -> np.ndarray:
        return np.array([0.01, 0.02, DISTANCE_M])


def make_subject(model, seed: int, beyond: bool, pose=(0.0, 0.0, 0.0)) -> Subject:
    rng = np.random.default_rng(seed)
    id_coeffs = rng.standard_normal(model.id_deltas.shape[0]).astype(np.float32)
    exp_weights = np.zeros(len(model.exp_names), np.float32)
    for name in rng.choice(EXPRESSIONS, 2, replace=False):
        exp_weights[model.exp_names.index(name)] = rng.uniform(0.1, 0.4)
    displacement = smooth_displacement(model, model.shape(id_coeffs), rng) if beyond else None
    return Subject(id_coeffs, exp_weights, displacement, tuple(float(a) for a in pose))


def smooth_displacement(model, vertices: np.ndarray, rng) -> np.ndarray:
    """14 Gaussian bumps of 25 mm width and up to +-3 mm along the skin's normals: low-frequency shape
    that the identity modes do not span (the training renders use other widths and heights)."""
    from inference_server.cues.synth import smooth_displacement as bumps

    skin = np.isin(model.vertex_part, [model.part_names.index("face"), model.part_names.index("head_neck")])
    return bumps(model, vertices, rng, skin, bumps=14, width_m=(0.025, 0.025), amplitude_m=0.003)


def render_subject(model, subject: Subject) -> np.ndarray:
    """RGB uint8 photo of the subject (rasteriser, Lambert shading, part colours)."""
    import torch

    from inference_server.head import render
    from inference_server.head.camera import Camera

    camera = Camera(CAMERA_FOCAL, (CAMERA_SIZE[1] / 2, CAMERA_SIZE[0] / 2), CAMERA_SIZE)
    posed = subject.canonical(model) @ subject.rotation.T + subject.translation
    rgb, _ = render.render_shaded(torch.from_numpy(posed.astype(np.float32)),
                                  torch.from_numpy(render.drawn_faces(model)).long(),
                                  torch.from_numpy(render.vertex_colours(model)), camera)
    return rgb


def similarity(source: np.ndarray, target: np.ndarray):
    """Scale, rotation, translation taking ``source`` points onto ``target`` (least squares, Umeyama)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / (a ** 2).sum())
    return scale, rotation, mu_t - scale * rotation @ mu_s


def align(fitted: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The fitted head moved onto the truth by the similarity that best matches ``region``, its
    scale and rotation."""
    scale, rotation, shift = similarity(fitted[region], truth[region])
    return fitted @ (scale * rotation).T + shift, scale, rotation


def surface_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, samples: int = 5) -> np.ndarray:
    """Distance from each point to a densely sampled triangle surface (within ~0.1 mm on this model)."""
    from scipy.spatial import cKDTree

    steps = np.linspace(0, 1, samples)
    u, v = np.meshgrid(steps, steps)
    keep = (u + v) <= 1
    bary = np.stack([1 - u[keep] - v[keep], u[keep], v[keep]], 1)
    dense = np.einsum("sk,fkd->fsd", bary, vertices[faces]).reshape(-1, 3)
    return cKDTree(dense).query(points)[0]


def face_faces(model) -> np.ndarray:
    return model.faces[model.face_mask[model.faces].all(1)]


def shape_errors(model, table, canonical: np.ndarray, truth: np.ndarray) -> dict:
    """3D landmark and scan-to-mesh errors (mm) of a canonical head after similarity alignment."""
    aligned, scale, rotation = align(canonical, truth, model.face_mask)
    landmarks = np.linalg.norm(table.points(aligned) - table.points(truth), axis=1)
    surface = surface_distance(truth[model.face_mask], aligned, face_faces(model))
    return {"landmark_mm": 1000 * landmarks.mean(), "surface_mm": 1000 * surface.mean(), "scale": scale,
            "alignment": rotation}


def evaluate(model, table, subject: Subject, fit) -> dict:
    """Errors of one fit. ``pose_deg`` compares the object transforms; ``face_pose_deg`` the
    posed face regions (the identity modes carry a little head tilt of their own, ~1.6 deg at
    1 sigma, which the photo cannot tell from pose)."""
    from inference_server.head.camera import rotation_angle_deg

    truth = subject.canonical(model)
    errors = shape_errors(model, table, fit.canonical_vertices, truth)
    mean_head = shape_errors(model, table, model.vertices, truth)
    return {"pose_deg": rotation_angle_deg(subject.rotation, fit.rotation),
            "face_pose_deg": rotation_angle_deg(subject.rotation @ errors.pop("alignment"), fit.rotation),
            **errors, "mean_head_surface_mm": mean_head["surface_mm"], "residual_pct": fit.residual_eye_pct}


def canonical_difference_mm(model, first: np.ndarray, second: np.ndarray) -> float:
    """Mean face-region vertex distance between two canonical heads after similarity alignment."""
    aligned, _, _ = align(first, second, model.face_mask)
    return float(1000 * np.linalg.norm(aligned[model.face_mask] - second[model.face_mask], axis=1).mean())


POSES = {"frontal": (0.0, 0.0, 0.0), "turned": (30.0, 6.0, -5.0)}


class LandmarkReader:
    """The project's landmark chain (MTCNN -> aligned crop -> FaceMesh) in photo pixels."""

    def __init__(self):
        import torch

        from inference_server.detection import FaceDetector
        from inference_server.landmarks import LandmarkModel

        self.detector, self.landmarker = FaceDetector(torch.device("cpu")), LandmarkModel()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from inference_server.head.photo_landmarks import locate_all

        found = locate_all(rgb, self.detector, self.landmarker)
        if not found:
            raise RuntimeError("no face landmarks on a synthetic render")
        return found[0]


def config_with(settings: list[str], config=None):
    """``config`` (by default ``HeadFitConfig()``) with ``FIELD=VALUE`` overrides (the benchmarks' ``--set``)."""
    from inference_server.head.fit import HeadFitConfig

    config = HeadFitConfig() if config is None else config
    for item in settings:
        field, value = item.split("=", 1)
        config = replace(config, **{field: setting_value(getattr(config, field), value)})
    return config


def setting_value(current, text: str):
    """``text`` as a value of ``current``'s type: booleans from true/false (``bool("false")`` is
    True), tuples of numbers from comma-separated text."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(float(part) for part in text.split(","))
    return type(current)(text)


def method_names(networks: int) -> tuple[str, ...]:
    """The fits compared: landmarks, one per cues checkpoint, and the ceiling with perfect cues."""
    return ("landmarks",) + tuple("cues" + (str(i + 1) if i else "") for i in range(networks)) + ("truth_cues",)


def truth_cues(model, subject: Subject, step: int = 8):
    """Perfect dense cues for a subject (what the fit would get from a flawless network): every
    ``step``-th photo pixel the true head covers, the model vertex it shows, its true nearness."""
    import torch

    from inference_server.cues.predict import SNAP_MM, Cues, skin_vertices
    from inference_server.head import raster, render

    posed = torch.from_numpy((subject.canonical(model) @ subject.rotation.T + subject.translation).astype(np.float32))
    faces = torch.from_numpy(render.drawn_faces(model)).long()
    principal = (CAMERA_SIZE[1] / 2, CAMERA_SIZE[0] / 2)
    seen = raster.rasterize(raster.project(posed, CAMERA_FOCAL, principal), faces, CAMERA_SIZE, render.FRONT_FACING)
    on_mean_head = raster.interpolate(torch.from_numpy(model.vertices.astype(np.float32)), faces, seen).numpy()
    rows, cols = np.nonzero(seen.mask.numpy()[::step, ::step])
    rows, cols = rows * step, cols * step
    vertices, tree = skin_vertices(model)
    distance, nearest = tree.query(on_mean_head[rows, cols])
    keep = distance < SNAP_MM / 1000
    depth = seen.depth.numpy()[rows, cols][keep]
    count = int(keep.sum())
    return Cues(vertex=vertices[nearest[keep]], points_px=np.stack([cols, rows], 1)[keep] + 0.5,
                nearness_px=CAMERA_FOCAL * (depth.mean() - depth) / depth.mean(), weight_2d=np.ones(count),
                weight_depth=np.ones(count), identity=np.zeros(model.id_deltas.shape[0], np.float32))


def subjects_of(model, count: int, first_seed: int = 0) -> list[tuple[int, str, str, "Subject"]]:
    return [(seed, kind, pose_name, make_subject(model, seed, kind == "beyond", pose))
            for seed in range(first_seed, first_seed + count) for kind in ("model", "beyond")
            for pose_name, pose in POSES.items()]


def cycles_renders(model, subjects: list["Subject"], samples: int = 8) -> list[np.ndarray]:
    """The subjects rendered by Blender's Cycles (``cycles_render.py`` in a bpy subprocess)."""
    import subprocess
    import tempfile

    from PIL import Image

    from inference_server.head import render

    with tempfile.TemporaryDirectory() as folder:
        scenes = {f"vertices_{i}": (s.canonical(model) @ s.rotation.T + s.translation).astype(np.float32)
                  for i, s in enumerate(subjects)}
        np.savez(Path(folder) / "scenes.npz", faces=render.drawn_faces(model), colours=render.vertex_colours(model),
                 focal=CAMERA_FOCAL, size=CAMERA_SIZE[0], **scenes)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "cycles_render.py"), str(Path(folder) / "scenes.npz"),
                        folder, "--samples", str(samples)], check=True, stdout=subprocess.DEVNULL)
        return [np.asarray(Image.open(Path(folder) / f"scene_{i}.png").convert("RGB")) for i in range(len(subjects))]


def run(model, table, basis, reader, subjects: int, config, save_renders: Path | None, renderer: str = "raster",
        predictors=(), first_seed: int = 0) -> list[dict]:
    """One row per subject, pose and method (``landmarks``: FaceMesh alone; ``cues``, ``cues2``, ...:
    with each network; ``truth_cues``: with perfect dense cues from the true head, the fit's ceiling)."""
    import torch

    from inference_server.head.fit import fit_head

    chosen = subjects_of(model, subjects, first_seed)
    images = (cycles_renders(model, [subject for *_, subject in chosen]) if renderer == "cycles"
              else [render_subject(model, subject) for *_, subject in chosen])
    rows, fits = [], {}
    for (seed, kind, pose_name, subject), rgb in zip(chosen, images):
        if save_renders:
            from PIL import Image
            save_renders.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(save_renders / f"subject{seed}_{kind}_{pose_name}_{renderer}.png")
        landmarks = reader(rgb)
        networks = dict(zip(method_names(len(predictors))[1:-1], predictors))
        for method in method_names(len(predictors)):
            start, start_cpu = time.perf_counter(), time.process_time()
            cues = (networks[method](rgb, landmarks) if method in networks
                    else truth_cues(model, subject) if method == "truth_cues" else None)
            fit = fit_head(model, landmarks, CAMERA_SIZE, config, torch.device("cpu"), basis=basis, cues=cues)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            row = {"subject": seed, "kind": kind, "pose": pose_name, "method": method, "fit_ms": 1000 * elapsed,
                   "fit_cpu_ms": 1000 * cpu} | evaluate(model, table, subject, fit)
            other = fits.get((seed, kind, method))
            if other is not None:
                row["pair_mm"] = canonical_difference_mm(model, fit.canonical_vertices, other.canonical_vertices)
            fits[(seed, kind, method)] = fit
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def raster_ms(model) -> float:
    import torch

    from inference_server.head import raster, render

    posed = torch.from_numpy((model.vertices * [1.0, -1.0, -1.0] + [0.0, 0.02, 0.6]).astype(np.float32))
    screen = raster.project(posed, 1000.0, (256.0, 256.0))
    faces = torch.from_numpy(model.faces).long()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        with torch.inference_mode():
            raster.rasterize(screen, faces, (512, 512), render.FRONT_FACING)
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def print_table(rows: list[dict]) -> None:
    keys = ("pose_deg", "face_pose_deg", "landmark_mm", "surface_mm", "mean_head_surface_mm", "residual_pct",
            "fit_ms", "fit_cpu_ms")
    print("\nkind    pose     method    " + " ".join(f"{k:>14}" for k in keys) + "    pair_mm  vs mean head")
    for kind in ("model", "beyond"):
        for pose in POSES:
            for method in sorted({r["method"] for r in rows}, key=[r["method"] for r in rows].index):
                chosen = [r for r in rows if r["kind"] == kind and r["pose"] == pose and r["method"] == method]
                if not chosen:
                    continue
                pair = [r["pair_mm"] for r in chosen if "pair_mm" in r]
                gain = 1 - np.mean([r["surface_mm"] for r in chosen]) / np.mean([r["mean_head_surface_mm"] for r in chosen])
                print(f"{kind:7} {pose:8} {method:9} " + " ".join(f"{np.mean([r[k] for r in chosen]):14.2f}" for k in keys)
                      + (f"  {np.mean(pair):9.2f}" if pair else " " * 11) + f"  {100 * gain:+10.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="subjects' first seed (tune settings on other seeds than the ones you report)")
    parser.add_argument("--save-renders", type=Path)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override HeadFitConfig fields")
    parser.add_argument("--renderer", choices=("raster", "cycles"), default="raster",
                        help="who renders the subjects: our rasteriser, or Blender's Cycles (bpy; not our training renderer)")
    parser.add_argument("--cues", type=Path, nargs="+", default=[],
                        help="cues checkpoints, each fitted as its own method (default: the shipped weights, if present)")
    parser.add_argument("--mirror-average", choices=("on", "off", "both"), default="on",
                        help="the network also sees the mirrored crop (the product's default: on); both: each "
                             "checkpoint is fitted twice, without and with")
    args = parser.parse_args()
    import torch

    from inference_server.head.basis import ShapeBasis

    model, table = evaluation_model()
    config = config_with(args.set)
    basis = ShapeBasis(model, table, torch.device("cpu"))
    from inference_server.cues import checkpoint
    from inference_server.cues.predict import CuesPredictor

    paths = args.cues or [path for path in [checkpoint.SHIPPED] if path.exists()]
    averaging = {"on": (True,), "off": (False,), "both": (False, True)}[args.mirror_average]
    chosen = [(path, mirror) for path in paths for mirror in averaging]
    predictors = [CuesPredictor.load(path, model, mirror_average=mirror) for path, mirror in chosen]
    names = method_names(len(chosen))[1:-1]
    print(f"rasterise full head at 512x512: {raster_ms(model):.1f} ms (best of 10); cues: "
          + (", ".join(f"{name} = {path}{' mirror-averaged' if mirror else ''}"
                       for name, (path, mirror) in zip(names, chosen)) or "none"))
    print_table(run(model, table, basis, LandmarkReader(), args.subjects, config, args.save_renders, args.renderer,
                    predictors, args.first_seed))


if __name__ == "__main__":
    main()
