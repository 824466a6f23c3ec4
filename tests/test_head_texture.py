"""The head's texture side: the one-image atlas, the left/right mirror map, and the photo unwrapped
into the atlas (photo where seen, mirror where the other side was seen, smooth skin elsewhere).

The photos are made here: the model head, posed and projected by a pinhole camera, painted with a
known texture by splatting dense surface points through a z-buffer (test-only; the product's
visibility comes from the fitting side's rasteriser).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_server.head.atlas import MARGIN, REGION_INDEX, REGIONS, atlas_of
from inference_server.head.model import HeadModel
from inference_server.head.sampling import sample_bilinear
from inference_server.head.symmetry import mirror_of
from inference_server.head.texels import interpolate, texel_map
from inference_server.head.texture import DEFAULT_COLOURS, photo_vertex_colours, unwrap, vertex_fill
from tests import ict_fixtures as ict

SIZE = 1024
OUT = Path(os.environ.get("FACEFORGE_TEST_OUT", "/tmp/faceforge_test_out"))


@pytest.fixture(scope="module")
def model() -> HeadModel:
    return HeadModel.load(ict.require_ict())


def _rotation_y(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


class Camera:
    """Pinhole camera on +Z looking at the head's centre; image x right, y down, pixel centres at +0.5."""

    def __init__(self, model: HeadModel, yaw: float, size: tuple[int, int] = (400, 400),
                 centre_px: tuple[float, float] | None = None, focal: float = 900.0, distance: float = 0.7):
        self.rotation, self.size, self.focal, self.distance = _rotation_y(yaw), size, focal, distance
        self.centre = model.vertices[model.face_mask].mean(axis=0)
        self.principal = np.array(centre_px if centre_px else (size[0] / 2, size[1] / 2))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        posed = (points - self.centre) @ self.rotation.T
        depth = self.distance - posed[:, 2]
        xy = self.principal + self.focal * np.stack([posed[:, 0], -posed[:, 1]], axis=1) / depth[:, None]
        return xy, depth


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    normal = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    out = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(out, faces[:, k], normal)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _splat(xy: np.ndarray, depth: np.ndarray, values: np.ndarray, size: tuple[int, int]):
    """Nearest point per pixel (z-buffer over points) -> image of ``values`` and the depth buffer."""
    col, row = np.floor(xy[:, 0]).astype(int), np.floor(xy[:, 1]).astype(int)
    inside = (col >= 0) & (col < size[0]) & (row >= 0) & (row < size[1])
    pixel = row[inside] * size[0] + col[inside]
    order = np.lexsort((depth[inside], pixel))
    pixel, first = np.unique(pixel[order], return_index=True)
    image = np.full((size[0] * size[1],) + values.shape[1:], 128, values.dtype)
    zbuffer = np.full(size[0] * size[1], np.inf)
    image[pixel] = values[inside][order][first]
    zbuffer[pixel] = depth[inside][order][first]
    return image.reshape(size[1], size[0], *values.shape[1:]), zbuffer.reshape(size[1], size[0])


def _weights(model: HeadModel, camera: Camera, zbuffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image positions and visibility x facing of the posed head's vertices. A vertex is visible when
    no splatted point in its pixel is nearer than the depth a pixel spans at its slant (+1 mm)."""
    from scipy.ndimage import minimum_filter

    xy, depth = camera.project(model.vertices)
    posed_normals = _vertex_normals(model.vertices, model.faces) @ camera.rotation.T
    towards_camera = -(((model.vertices - camera.centre) @ camera.rotation.T) - [0, 0, camera.distance])
    towards_camera /= np.linalg.norm(towards_camera, axis=1, keepdims=True)
    facing = np.clip((posed_normals * towards_camera).sum(axis=1), 0, 1)
    closed = np.where(np.isfinite(zbuffer), zbuffer, minimum_filter(zbuffer, size=3))  # pinholes between points
    col = np.clip(xy[:, 0].astype(int), 0, camera.size[0] - 1)
    row = np.clip(xy[:, 1].astype(int), 0, camera.size[1] - 1)
    slant = np.sqrt(1 - np.minimum(facing, 0.95) ** 2) / np.maximum(facing, 0.3)
    visible = depth <= closed[row, col] + 0.001 + depth / camera.focal * slant
    return xy, visible * facing


def _texel_points(model: HeadModel, size: int) -> tuple[np.ndarray, np.ndarray]:
    """3D point of every covered texel on the neutral head, and whether it may hide what is behind
    it (the transparent eye shells and the thin eyelashes do not)."""
    texels = texel_map(model, size)
    points = np.einsum("nk,nkc->nc", texels.bary, model.vertices[texels.corners].astype(np.float64))
    see_through = np.array([name.startswith(("lacrimal", "eye_blend", "eye_occlusion", "eyelashes"))
                            for name in model.part_names])
    return points, ~see_through[model.vertex_part[texels.corners[:, 0]]]


def _pattern(points: np.ndarray) -> np.ndarray:
    """A known, left/right symmetric colouring of the head's surface (3 cm stripes across the face)."""
    x, y, z = np.abs(points[:, 0]), points[:, 1], points[:, 2]
    return np.stack([150 + 70 * np.sin(200 * x), 130 + 60 * np.sin(160 * y + 1), 110 + 50 * np.cos(90 * z)], axis=1)


def _save(name: str, image: np.ndarray) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(OUT / name)
    return OUT / name


def test_atlas_packs_every_chart_into_one_unit_square_without_overlap(model):
    atlas = atlas_of(model)
    assert atlas.uv.min() >= 0 and atlas.uv.max() <= 1 and atlas.face_uv.shape == model.faces.shape
    assert atlas is atlas_of(model), "computed once per model"
    for i, region in enumerate(REGIONS):  # each chart stays inside its own box
        uv = atlas.corner_uv[atlas.face_region == i].reshape(-1, 2)
        assert len(uv), region.name
        assert (uv >= np.array(region.origin)).all() and (uv <= np.array(region.origin) + region.size).all(), region.name
    # Uniform scale per region: atlas triangle areas are the upstream ones times size^2 (no stretch).
    upstream, packed = model.uv[model.face_uv].astype(np.float64), atlas.corner_uv.astype(np.float64)
    area = lambda c: np.abs(np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0])) / 2  # noqa: E731
    for i, region in enumerate(REGIONS):
        sel = (atlas.face_region == i) & (area(upstream) > 1e-6)  # float32 UVs: tiny triangles are noise
        ratio = area(packed[sel]) / area(upstream[sel])
        assert np.allclose(ratio, (region.size - 2 * MARGIN) ** 2, rtol=1e-2), region.name
    boxes = [(r.origin[0], r.origin[1], r.origin[0] + r.size, r.origin[1] + r.size) for r in REGIONS]
    for i, a in enumerate(boxes):  # region boxes are disjoint: left and right eyes no longer share texels
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    # Within a region charts do not overlap either (the texels covered add up to the triangles' area),
    # except the transparent eye helper shells, whose left and right copies share texels as upstream.
    texels = texel_map(model, SIZE)
    covered = np.bincount(atlas.face_region[texels.face], minlength=len(REGIONS))
    for i, region in enumerate(REGIONS):
        if region.name in ("eye_occlusion", "eye_blend"):
            continue
        area_px = area(packed[atlas.face_region == i]).sum() * SIZE ** 2
        assert abs(covered[i] - area_px) < 0.03 * area_px + 50, (region.name, covered[i], area_px)
    assert covered[REGION_INDEX["face"]] / covered.sum() > 0.55, "the face gets most of the texels"


def test_mirror_map_pairs_left_and_right(model):
    mirror = mirror_of(model)
    assert mirror.matched.mean() > 0.999
    flipped = model.vertices[mirror.index] * [-1, 1, 1]
    assert np.abs(flipped - model.vertices)[mirror.matched].max() < 1e-4
    assert (mirror.index[mirror.index] == np.arange(model.vertex_count))[mirror.matched].all()
    left, right = model.part_names.index("eyeball_left"), model.part_names.index("eyeball_right")
    assert (model.vertex_part[mirror.index[model.vertex_part == left]] == right).all()
    centre = np.abs(model.vertices[:, 0]) < 1e-7
    assert (mirror.index[centre] == np.nonzero(centre)[0]).mean() > 0.99, "the midline maps to itself"


def _photograph(model: HeadModel, camera: Camera, paint=None):
    """The head as ``camera`` sees it: the photo (painted by ``paint(points)``, if given), the
    vertices' image positions and their visibility x facing weights."""
    points, opaque = _texel_points(model, SIZE)
    colours = np.zeros((opaque.sum(), 3), np.uint8) if paint is None else np.clip(paint(points[opaque]), 0, 255).astype(np.uint8)
    photo, zbuffer = _splat(*camera.project(points[opaque]), colours, camera.size)
    return (photo, *_weights(model, camera, zbuffer))


@pytest.fixture(scope="module")
def turned_head(model):
    """A head turned 40 degrees (its left cheek away from the camera) painted with ``_pattern``, unwrapped."""
    photo, image_xy, weight = _photograph(model, Camera(model, yaw=40), _pattern)
    texture, coverage = unwrap(photo, image_xy, weight, model, SIZE)
    _save("head_turned_photo.png", photo)
    print(f"texture written to {_save('head_turned_texture.png', texture)}")
    return {"photo": photo, "image_xy": image_xy, "weight": weight, "texture": texture, "coverage": coverage}


def test_unwrap_recovers_a_known_texture_and_mirrors_the_hidden_side(model, turned_head):
    texture, coverage = turned_head["texture"], turned_head["coverage"]
    texels = texel_map(model, SIZE)
    points = _texel_points(model, SIZE)[0]
    truth = _pattern(points)
    colour = texture.reshape(-1, 3)[texels.texel].astype(float)
    alpha = coverage.reshape(-1)[texels.texel]
    assert np.isfinite(coverage).all() and coverage.min() >= 0 and coverage.max() <= 1
    face = atlas_of(model).face_region[texels.face] == REGION_INDEX["face"]
    error = np.abs(colour - truth).mean(axis=1)
    seen = face & (alpha > 0.99)
    assert seen.sum() > 0.25 * face.sum() and error[seen].mean() < 6, (seen.sum(), error[seen].mean())
    # The cheek turned away is not in the photo; its mirror image is, and the pattern is symmetric.
    mirror_alpha = np.nan_to_num(sample_bilinear(coverage[..., None], texels.mirror_xy)[:, 0])
    hidden_cheek = face & (alpha == 0) & (mirror_alpha > 0.99) & (points[:, 0] > 0.03)
    assert hidden_cheek.sum() > 0.15 * face.sum()
    assert error[hidden_cheek].mean() < 6, error[hidden_cheek].mean()
    # ... and that came from the mirror: the smooth fill alone is far off there.
    colours = photo_vertex_colours(turned_head["photo"], turned_head["image_xy"])
    fill = interpolate(texels, vertex_fill(colours, turned_head["weight"], model))
    assert np.abs(fill - truth)[hidden_cheek].mean() > 2 * error[hidden_cheek].mean()


def test_unwrap_of_a_real_photo_fills_the_unseen_head_with_skin(model):
    from skimage import data

    photo = data.astronaut()
    _, image_xy, weight = _photograph(model, _camera_on_astronaut(model))
    texture, coverage = unwrap(photo, image_xy, weight, model, SIZE)
    print(f"texture written to {_save('head_astronaut_texture.png', texture)}")
    texels = texel_map(model, SIZE)
    alpha, colour = coverage.reshape(-1)[texels.texel], texture.reshape(-1, 3)[texels.texel].astype(float)
    region = atlas_of(model).face_region[texels.face]
    x, y = model.vertices[:, 0], model.vertices[:, 1]
    chin, brow = y[model.landmarks68[8]], y[model.landmarks68[17:27]].max()
    front = model.face_mask & (np.abs(x) < 0.04) & (y > chin) & (y < brow)
    frontal = front[texels.corners].all(axis=1) & (region == REGION_INDEX["face"])
    assert alpha[frontal].mean() > 0.8, "the face between brows, chin and cheeks comes from the photo"
    visible_skin = model.face_mask & (weight > 0.6)
    skin = np.median(photo[image_xy[visible_skin, 1].astype(int), image_xy[visible_skin, 0].astype(int)], axis=0)
    scalp = model.vertex_part[texels.corners[:, 0]] == model.part_names.index("head_neck")  # not the sockets
    back = (region == REGION_INDEX["back_head"]) & (alpha == 0) & scalp
    assert back.sum() > 10000
    assert np.abs(colour[back].mean(axis=0) - skin).max() < 25, (colour[back].mean(axis=0), skin)
    assert colour[back].std(axis=0).max() < 25, "a smooth fill, no streaks"
    teeth = (region == REGION_INDEX["teeth"]) & (alpha == 0)
    assert np.abs(colour[teeth].mean(axis=0) - DEFAULT_COLOURS["teeth"]).max() < 15, "hidden teeth: a tooth colour"
    sclera = np.isin(region, [REGION_INDEX["sclera_left"], REGION_INDEX["sclera_right"]]) & (alpha == 0)
    assert np.abs(colour[sclera].mean(axis=0) - DEFAULT_COLOURS["sclera"]).max() < 15, "under the lids: white"


def _camera_on_astronaut(model: HeadModel) -> Camera:
    """The frontal model head on the astronaut's face: its eye centres on hers, (201, 100) and (246, 100)."""
    eyes = np.stack([model.vertices[model.landmarks68[36:42]].mean(axis=0),
                     model.vertices[model.landmarks68[42:48]].mean(axis=0)])
    unit = Camera(model, yaw=0, size=(512, 512), centre_px=(0, 0), focal=1.0).project(eyes)[0]
    focal = 45.0 / np.linalg.norm(unit[1] - unit[0])
    principal = np.array([(201 + 246) / 2, 100]) - focal * unit.mean(axis=0)
    return Camera(model, yaw=0, size=(512, 512), centre_px=tuple(principal), focal=focal)


@pytest.mark.parametrize("case", ["photo", "xy", "weight"])
def test_unwrap_refuses_malformed_input(model, case):
    photo, xy, weight = np.zeros((64, 64, 3), np.uint8), np.zeros((model.vertex_count, 2)), np.ones(model.vertex_count)
    if case == "photo":
        photo = photo[..., 0]
    elif case == "xy":
        xy = xy[:-1]
    else:
        weight = weight[:10]
    with pytest.raises(ValueError, match="photo must be|need image_xy"):
        unwrap(photo, xy, weight, model, 256)


def _lopsided(points: np.ndarray) -> np.ndarray:
    """A colouring that differs left and right (the mirror cannot guess one side from the other)."""
    x, y = points[:, 0], points[:, 1]
    return np.stack([150 + 70 * np.sin(200 * x + 0.8), 130 + 60 * np.sin(160 * y + 1), 120 + 60 * np.tanh(80 * x)],
                    axis=1)


def test_two_photos_from_either_side_texture_both_cheeks_and_match_their_exposure(model):
    """Photos 40 degrees left and right (the second darker, as another shot would be): the fused atlas
    shows each cheek from the photo that saw it, in the first photo's exposure, where one photo alone
    can only mirror the cheek it did not see (wrong for a lopsided face)."""
    from inference_server.head.texture import PhotoView, unwrap_views

    views = []
    for yaw, exposure in ((40, 1.0), (-40, 0.7)):
        photo, image_xy, weight = _photograph(model, Camera(model, yaw=yaw), lambda p: _lopsided(p) * exposure)
        views.append(PhotoView(photo, image_xy, weight))
    fused, coverage = unwrap_views(views, model, SIZE)
    single, _ = unwrap(views[0].photo_rgb, views[0].image_xy, views[0].weight, model, SIZE)
    _save("head_two_views_texture.png", fused)
    texels = texel_map(model, SIZE)
    points = _texel_points(model, SIZE)[0]
    truth = _lopsided(points)
    face = atlas_of(model).face_region[texels.face] == REGION_INDEX["face"]
    seen = face & (coverage.reshape(-1)[texels.texel] > 0.99)
    error = lambda texture: np.abs(texture.reshape(-1, 3)[texels.texel].astype(float) - truth).mean(axis=1)  # noqa: E731
    for side in (points[:, 0] > 0.03, points[:, 0] < -0.03):  # each cheek, away from the midline
        assert (seen & side).sum() > 0.15 * face.sum()
        assert error(fused)[seen & side].mean() < 8, error(fused)[seen & side].mean()
    hidden_in_first = face & (points[:, 0] > 0.03) & seen
    assert error(single)[hidden_in_first].mean() > 2 * error(fused)[hidden_in_first].mean()
    centre = seen & (np.abs(points[:, 0]) < 0.01)  # both photos see it: blended, no exposure step
    assert error(fused)[centre].mean() < 8, error(fused)[centre].mean()
