"""The real pipeline on real photos: geometry, texture alignment and failure modes."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from addon.wire.protocol import ErrorCode, ProtocolError
from inference_server import landmarks as lm
from inference_server import meshing
from inference_server.pipeline import FacePipeline


@pytest.fixture(scope="module")
def pipeline():
    return FacePipeline(torch.device("cpu"))


@pytest.fixture(scope="module", params=["astronaut", "grace_hopper"])
def face(request, pipeline, astronaut_png, grace_hopper_jpg):
    photo = astronaut_png if request.param == "astronaut" else grace_hopper_jpg
    result = pipeline.reconstruct(photo)
    assert len(result.faces) == 1
    return result.faces[0]


def nearest_vertex(vertices: np.ndarray, point: np.ndarray) -> int:
    """Vertex closest to ``point`` seen from the camera (X/Z plane)."""
    return int(np.argmin(np.linalg.norm(vertices[:, [0, 2]] - point[[0, 2]], axis=1)))


def test_mesh_size_and_index_validity(face):
    v, f = face.arrays["vertices"], face.arrays["faces"]
    assert v.dtype == np.float32 and f.dtype == np.int32
    assert len(v) >= 8000 and len(f) >= 15000
    assert f.min() == 0 and f.max() == len(v) - 1  # compact: every vertex is used
    assert np.isfinite(v).all()
    a, b = f.ravel().astype(np.int64), np.roll(f, -1, 1).ravel().astype(np.int64)
    _, uses = np.unique(np.minimum(a, b) * len(v) + np.maximum(a, b), return_counts=True)
    assert uses.max() == 2, "manifold: no edge shared by three triangles (lattice and band meet exactly)"


def test_metric_scale_and_axes(face):
    v = face.arrays["vertices"]
    width, depth, height = np.ptp(v, axis=0)
    assert 0.12 < width < 0.20, "a face is about 14 cm wide"
    assert 0.14 < height < 0.26 and height > width, "taller than wide, Z up"
    assert 0.03 < depth < 0.12


def test_triangles_face_the_camera(face):
    v, f = face.arrays["vertices"], face.arrays["faces"]
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (normals[:, 1] < 0).mean() > 0.97, "normals point to -Y, the front view"


def test_depth_ordering_is_anatomical(face):
    v, marks = face.arrays["vertices"], face.arrays["landmarks"]
    y = lambda index: v[nearest_vertex(v, marks[index]), 1]  # noqa: E731  (more negative = nearer)
    nose = y(lm.NOSE_TIP)
    for other in (50, 280, *lm.EYE_OUTER, *lm.MOUTH_CORNERS):  # cheeks, outer eye corners, mouth corners
        assert nose < y(other) - 0.008, f"nose tip is not clearly in front of landmark {other}"
    eye_inner = np.mean([y(133), y(362)])
    assert eye_inner > y(6) + 0.004, "eye sockets sit behind the nose bridge"


def test_no_spikes_and_bounded_edges(face):
    v, f = face.arrays["vertices"], face.arrays["faces"]
    edges = np.linalg.norm(v[f] - v[np.roll(f, 1, 1)], axis=2)
    median = np.median(edges)
    assert edges.max() < 12 * median and edges.max() < 0.015
    average = meshing._neighbour_average(len(v), f)
    rim = meshing.boundary_vertices(len(v), f)
    offsets = np.linalg.norm(average @ v - v, axis=1)
    assert offsets[~rim].max() < 3 * median, "no vertex sticks out of its neighbourhood"
    near_rim = rim.copy()
    for _ in range(3):  # grow the rim band by three rings: the face turns away steeply there
        near_rim[f[near_rim[f].any(1)].ravel()] = True
    assert offsets[~near_rim].max() < 1.5 * median


def boundary_loops(f: np.ndarray) -> list[list[int]]:
    edges = np.sort(np.stack([f, np.roll(f, -1, 1)], 2).reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    nxt = {}
    for a, b in unique[counts == 1]:
        nxt.setdefault(a, []).append(b)
        nxt.setdefault(b, []).append(a)
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            step = [n for n in nxt[cur] if n != prev and n not in seen]
            if not step:
                break
            prev, cur = cur, step[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def test_rim_follows_a_smooth_contour(face):
    """No staircase: the outer boundary turns gently at every vertex (a pixel staircase turns 90 degrees)."""
    v, f = face.arrays["vertices"], face.arrays["faces"]
    outer = max(boundary_loops(f), key=len)
    ring = v[outer][:, [0, 2]]
    d1, d2 = np.roll(ring, -1, 0) - ring, ring - np.roll(ring, 1, 0)
    cos = (d1 * d2).sum(1) / (np.linalg.norm(d1, axis=1) * np.linalg.norm(d2, axis=1))
    turn = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.percentile(turn, 95) < 25 and turn.max() < 75
    assert len(boundary_loops(f)) <= 2  # the face rim, plus the mouth when it is open


def test_uvs_and_texture_alignment(face):
    """Projected 3D landmarks land on MTCNN's five points in the photo, through UVs and the crop transform."""
    uv, v, tex = face.arrays["uvs"], face.arrays["vertices"], face.arrays["texture"]
    assert uv.min() >= 0 and uv.max() <= 1
    size = tex.shape[0]
    to_image = np.array(face.meta["crop_to_image"])

    def photo_xy(landmark_indices):
        vertex_ids = [nearest_vertex(v, face.arrays["landmarks"][i]) for i in landmark_indices]
        crop = np.stack([uv[vertex_ids, 0] * size, (1 - uv[vertex_ids, 1]) * size], 1).mean(0)
        return to_image[:, :2] @ crop + to_image[:, 2]

    points5 = np.array(face.meta["points5"])
    box = np.array(face.meta["box"])
    tolerance = 0.08 * (box[2] - box[0])  # a few pixels: about 7 px for a 90 px face
    targets = [lm.EYE_RINGS[0], lm.EYE_RINGS[1], [lm.NOSE_TIP], [lm.MOUTH_CORNERS[0]], [lm.MOUTH_CORNERS[1]]]
    errors = [np.linalg.norm(photo_xy(ids) - p) for ids, p in zip(targets, points5)]
    assert max(errors) < tolerance, f"landmark-to-photo errors {np.round(errors, 1)} px"


def test_depth_map_and_mask(face):
    depth, mask = face.arrays["depth"], face.arrays["mask"]
    assert depth.shape == mask.shape == (256, 256) and depth.dtype == np.float32
    assert 0.15 < mask.mean() < 0.7
    assert np.isfinite(depth[mask]).all() and depth[mask].min() >= 0 and depth[mask].max() > 0.03
    assert (depth[~mask] == 0).all()


def test_detail_map_is_a_bounded_high_pass_that_spares_the_eyes(face):
    from inference_server.detail import DETAIL_LIMIT

    detail, tex = face.arrays["detail"], face.arrays["texture"]
    assert detail.shape == tex.shape[:2] and detail.dtype == np.float32
    assert abs(float(detail.mean())) < 0.01 and detail.std() > 0.003
    assert np.abs(detail).max() <= DETAIL_LIMIT
    to_crop = np.linalg.inv(np.vstack([face.meta["crop_to_image"], [0, 0, 1]]))[:2]
    for ring in lm.EYE_RINGS:
        centre = to_crop[:, :2] @ face.arrays["landmarks_image"][list(ring)].mean(0) + to_crop[:, 2]
        x, y = np.round(centre).astype(int)
        assert np.abs(detail[y - 3:y + 4, x - 3:x + 4]).max() < 0.1 * DETAIL_LIMIT, "iris is not relief"


def test_resolution_option_scales_vertex_count(pipeline, astronaut_png):
    coarse = pipeline.reconstruct(astronaut_png, {"resolution": 40}).faces[0]
    fine = pipeline.reconstruct(astronaut_png, {"resolution": 160}).faces[0]
    ratio = len(fine.arrays["vertices"]) / len(coarse.arrays["vertices"])
    assert 10 < ratio < 22  # vertex count grows with resolution squared (16x)


def test_smoothing_keeps_the_boundary_and_reduces_roughness(pipeline, grace_hopper_jpg):
    raw = pipeline.reconstruct(grace_hopper_jpg, {"taubin_passes": 0}).faces[0].arrays
    smooth = pipeline.reconstruct(grace_hopper_jpg, {"taubin_passes": 10}).faces[0].arrays
    rim = meshing.boundary_vertices(len(raw["vertices"]), raw["faces"])
    np.testing.assert_allclose(raw["vertices"][rim], smooth["vertices"][rim])
    rough = lambda a: np.abs(meshing._neighbour_average(len(a["vertices"]), a["faces"]) @ a["vertices"] - a["vertices"])[~rim].mean()  # noqa: E731
    assert rough(smooth) < rough(raw)


def composite(astronaut_rgb, grace_hopper_jpg) -> bytes:
    hopper = np.asarray(Image.open(io.BytesIO(grace_hopper_jpg)).convert("RGB"))
    canvas = np.full((620, 1100, 3), 200, np.uint8)
    canvas[:512, :512] = astronaut_rgb
    canvas[:600, 560:1072] = hopper
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_all_faces_of_a_group_photo(pipeline, astronaut_rgb, grace_hopper_jpg):
    photo = composite(astronaut_rgb, grace_hopper_jpg)
    result = pipeline.reconstruct(photo, {"face": "all"})
    assert result.meta["faces_detected"] == 2 and len(result.faces) == 2
    centres = sorted((np.array(f.meta["box"][0::2]).mean()) for f in result.faces)
    assert centres[0] < 512 < centres[1]  # one face from each photo
    assert pipeline.reconstruct(photo, {"face": "1"}).faces[0].index == 1
    with pytest.raises(ProtocolError) as info:
        pipeline.reconstruct(photo, {"face": "5"})
    assert info.value.code == ErrorCode.NO_FACE and "only 2" in info.value.message


def test_no_face_and_bad_options(pipeline, no_face_png, astronaut_png):
    with pytest.raises(ProtocolError) as info:
        pipeline.reconstruct(no_face_png)
    assert info.value.code == ErrorCode.NO_FACE
    for params in ({"resolution": 0}, {"colour": "red"}, {"face": "left"}, {"resolution": "many"}):
        with pytest.raises(ProtocolError) as info:
            pipeline.reconstruct(astronaut_png, params)
        assert info.value.code == ErrorCode.BAD_REQUEST


def test_rolled_head_is_aligned_upright(pipeline, astronaut_rgb):
    """A photo tilted by 25 degrees: the crop is de-rolled, so the mesh's eye line is level and the
    texture still lands on MTCNN's points in the (tilted) photo."""
    tilted = Image.fromarray(astronaut_rgb).rotate(25, resample=Image.BICUBIC, expand=True, fillcolor=(90, 90, 90))
    buf = io.BytesIO()
    tilted.save(buf, "PNG")
    face = pipeline.reconstruct(buf.getvalue()).faces[0]
    marks = face.arrays["landmarks"]
    left, right = marks[list(lm.EYE_RINGS[0])].mean(0), marks[list(lm.EYE_RINGS[1])].mean(0)
    roll = np.degrees(np.arctan2(right[2] - left[2], right[0] - left[0]))
    assert abs(roll) < 5, f"eye line tilted by {roll:.1f} degrees in the mesh"
    test_uvs_and_texture_alignment(face)


def test_large_photo_goes_through_downscaled_detection(pipeline, astronaut_rgb):
    big = Image.fromarray(astronaut_rgb).resize((3000, 3000), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)
    result = pipeline.reconstruct(buf.getvalue())
    assert result.meta["image_size"] == [3000, 3000]
    face = result.faces[0]
    assert len(face.arrays["vertices"]) >= 8000
    box = np.array(face.meta["box"])
    assert 400 < box[2] - box[0] < 700  # the 87 px astronaut face, scaled by 3000/512, in full-size pixels
    test_uvs_and_texture_alignment(face)


@pytest.mark.parametrize("resolution", [37, 64, 100, 131, 170])
def test_mesh_has_no_holes_at_any_resolution(pipeline, astronaut_png, grace_hopper_jpg, resolution):
    """Lattice and Delaunay band must meet exactly: every open edge belongs to the rim or the open mouth."""
    for photo in (astronaut_png, grace_hopper_jpg):
        face = pipeline.reconstruct(photo, {"resolution": resolution}).faces[0]
        f = face.arrays["faces"]
        loops = boundary_loops(f)
        assert len(loops) == 1 + int(face.meta["mouth_open"]), [len(loop) for loop in loops]
        a, b = f.ravel().astype(np.int64), np.roll(f, -1, 1).ravel().astype(np.int64)
        _, uses = np.unique(np.minimum(a, b) * len(face.arrays["vertices"]) + np.maximum(a, b), return_counts=True)
        assert uses.max() == 2
