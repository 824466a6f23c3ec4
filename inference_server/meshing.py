"""Face mesh from a height field: smooth contour, interior grid, Delaunay, spike removal, smoothing.

The boundary is a resampled spline through the face-oval landmarks, so the rim follows the face
contour instead of a pixel staircase; an open mouth becomes a hole bounded by the inner-lip spline.
"""
from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay


def closed_spline(ring: np.ndarray, spacing: float) -> np.ndarray:
    """Centripetal-free uniform Catmull-Rom through a closed polygon, resampled every ``spacing``."""
    p = np.asarray(ring, dtype=np.float64)
    dense_t = np.linspace(0, 1, 16, endpoint=False)[:, None]
    p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    segments = []
    for t in dense_t:  # 16 samples per segment, vectorised over segments
        t2, t3 = t * t, t * t * t
        segments.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                               + (3 * p1 - p0 - 3 * p2 + p3) * t3))
    dense = np.stack(segments, 1).reshape(-1, 2)
    closed = np.vstack([dense, dense[:1]])
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    count = max(8, int(round(arc[-1] / spacing)))
    at = np.linspace(0, arc[-1], count, endpoint=False)
    return np.stack([np.interp(at, arc, closed[:, 0]), np.interp(at, arc, closed[:, 1])], 1)


def polygon_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def region_mask(outline: np.ndarray, holes: list[np.ndarray], size: int, supersample: int = 4) -> np.ndarray:
    """Boolean (size, size) mask of the outline minus holes, rasterised with sub-pixel precision."""
    shift = int(np.log2(supersample))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(outline * supersample).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=shift)
    for hole in holes:
        cv2.fillPoly(mask, [np.round(hole * supersample).astype(np.int32)], 0, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def triangulate_region(outline: np.ndarray, holes: list[np.ndarray], spacing: float, size: int):
    """Points and triangles covering the region: rings on the boundaries, a regular grid inside.

    Returns (points (N, 2), triangles (F, 3) int32, boundary count): the first rows of ``points`` are
    the ring samples, so they can be recognised (and kept fixed) later.
    """
    rings = [closed_spline(outline, spacing)] + [closed_spline(h, spacing) for h in holes]
    boundary = np.vstack(rings)
    mask = region_mask(outline, holes, size)
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    # Interior grid nodes that keep half a spacing from every ring, so no sliver triangles form.
    axis = np.arange(spacing / 2, size, spacing)
    gx, gy = np.meshgrid(axis, axis)
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    px = np.clip(grid.astype(np.int64), 0, size - 1)
    inside = mask[px[:, 1], px[:, 0]] & (distance[px[:, 1], px[:, 0]] > 0.6 * spacing)
    points = np.vstack([boundary, grid[inside]])
    triangles = Delaunay(points, qhull_options="QJ Qbb Qc").simplices
    # Delaunay fills the convex hull. Only triangles made of one ring's vertices can lie outside the
    # region (in a concavity of the outline, or inside a hole); test exactly those against the rings.
    ring_of = np.full(len(points), -1)
    ring_of[:len(boundary)] = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    corner_rings = ring_of[triangles]
    single_ring = (corner_rings[:, 0] >= 0) & (corner_rings == corner_rings[:, :1]).all(1)
    keep = np.ones(len(triangles), bool)
    for index, ring in enumerate(rings):
        candidates = np.nonzero(single_ring & (corner_rings[:, 0] == index))[0]
        inside_ring = points_in_polygon(points[triangles[candidates]].mean(1), ring)
        keep[candidates] = inside_ring if index == 0 else ~inside_ring
    edges = np.linalg.norm(points[triangles] - points[np.roll(triangles, 1, 1)], axis=2)
    keep &= edges.max(1) < 2.5 * spacing
    return points, triangles[keep].astype(np.int32), len(boundary)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points x edges (meant for a few hundred points)."""
    a, b = polygon, np.roll(polygon, -1, 0)
    px, py = points[:, None, 0], points[:, None, 1]
    straddles = (a[None, :, 1] > py) != (b[None, :, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = a[None, :, 0] + (py - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (b[None, :, 1] - a[None, :, 1])
    return ((straddles & (px < cross_x)).sum(1) % 2) == 1


def face_the_viewer(points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Wind triangles of an image-space (y down) triangulation so their normals point at the camera.

    In Blender axes (X = x, Z = -y, camera at -Y) that means counter-clockwise in (x, -y)."""
    a, b, c = points[faces[:, 0]], points[faces[:, 1]], points[faces[:, 2]]
    signed = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    flipped = faces.copy()
    flipped[signed > 0] = faces[signed > 0][:, ::-1]  # CCW in y-down pixels is clockwise for the viewer
    return flipped


def _neighbour_average(vertex_count: int, faces: np.ndarray) -> sp.csr_matrix:
    """Sparse operator: each vertex -> mean of its 1-ring neighbours (the umbrella operator)."""
    a, b = faces.ravel(), np.roll(faces, 1, 1).ravel()
    adjacency = sp.coo_matrix((np.ones(2 * len(a)), (np.r_[a, b], np.r_[b, a])),
                              shape=(vertex_count, vertex_count)).tocsr()
    adjacency.data[:] = 1.0  # edges shared by two triangles were summed twice
    degree = np.asarray(adjacency.sum(1)).ravel()
    return (sp.diags(1.0 / np.maximum(degree, 1)) @ adjacency).tocsr()


def remove_spikes(vertices: np.ndarray, faces: np.ndarray, factor: float = 3.0) -> np.ndarray:
    """Drop triangles around spike vertices: interior vertices that stand further from the mean of
    their neighbours than ``factor`` median edge lengths. Steep but smooth walls (the face turning
    away at its silhouette) have small umbrella offsets and are kept."""
    corners = vertices[faces]
    median_edge = float(np.median(np.linalg.norm(corners - np.roll(corners, 1, 1), axis=2)))
    offset = np.linalg.norm(_neighbour_average(len(vertices), faces) @ vertices - vertices, axis=1)
    spikes = (offset > factor * median_edge) & ~boundary_vertices(len(vertices), faces)
    return faces[~spikes[faces].any(1)]


def largest_component(vertex_count: int, faces: np.ndarray) -> np.ndarray:
    """Faces of the largest edge-connected component (stray islands left by spike removal go)."""
    if len(faces) == 0:
        return faces
    a, b = faces.ravel(), np.roll(faces, 1, 1).ravel()
    graph = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(vertex_count, vertex_count))
    _, labels = connected_components(graph, directed=False)
    face_labels = labels[faces[:, 0]]
    return faces[face_labels == np.bincount(face_labels).argmax()]


def compact(faces: np.ndarray, *per_vertex: np.ndarray):
    """Drop unreferenced vertices; returns (faces, *per_vertex arrays) reindexed."""
    used = np.unique(faces)
    remap = np.full(max(len(a) for a in per_vertex), -1, np.int64)
    remap[used] = np.arange(len(used))
    return (remap[faces].astype(np.int32), *(a[used] for a in per_vertex))


def boundary_vertices(vertex_count: int, faces: np.ndarray) -> np.ndarray:
    """Boolean mask of vertices on an open edge (an edge used by one triangle)."""
    edges = np.sort(np.stack([faces, np.roll(faces, -1, 1)], 2).reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    flags = np.zeros(vertex_count, bool)
    flags[unique[counts == 1].ravel()] = True
    return flags


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int,
                  lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Laplacian smoothing without shrinkage (Taubin's lambda|mu); boundary vertices stay put."""
    if iterations <= 0:
        return vertices
    average = _neighbour_average(len(vertices), faces)
    movable = ~boundary_vertices(len(vertices), faces)[:, None]
    out = vertices.astype(np.float64)
    for _ in range(iterations):
        for factor in (lam, mu):
            out = out + factor * movable * (average @ out - out)
    return out.astype(vertices.dtype)
