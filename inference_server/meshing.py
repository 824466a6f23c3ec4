"""Face mesh from a height field: smooth contour, interior grid, Delaunay, spike removal, smoothing.

The boundary is a resampled spline through the face-oval landmarks, so the rim follows the face
contour instead of a pixel staircase; an open mouth becomes a hole bounded by the inner-lip spline.
"""
from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay, cKDTree


def closed_spline(ring: np.ndarray, spacing: float) -> np.ndarray:
    """Centripetal Catmull-Rom curve through a closed polygon, resampled every ``spacing``.

    The centripetal knots (alpha = 1/2) never form cusps or loops where control points are unevenly
    spaced, which uniform Catmull-Rom does at the jaw corners of the face oval."""
    p = np.asarray(ring, dtype=np.float64)
    p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    knot = lambda a, b: np.sqrt(np.maximum(np.linalg.norm(b - a, axis=1, keepdims=True), 1e-9))  # noqa: E731
    t0 = np.zeros((len(p), 1))
    t1 = t0 + knot(p0, p1)
    t2 = t1 + knot(p1, p2)
    t3 = t2 + knot(p2, p3)
    lerp = lambda a, b, ta, tb, t: ((tb - t) * a + (t - ta) * b) / (tb - ta)  # noqa: E731
    segments = []
    for u in np.linspace(0, 1, 16, endpoint=False):  # 16 samples per segment, vectorised over segments
        t = t1 + u * (t2 - t1)
        a1, a2, a3 = lerp(p0, p1, t0, t1, t), lerp(p1, p2, t1, t2, t), lerp(p2, p3, t2, t3, t)
        segments.append(lerp(lerp(a1, a2, t0, t2, t), lerp(a2, a3, t1, t3, t), t1, t2, t))
    dense = np.stack(segments, 1).reshape(-1, 2)
    closed = np.vstack([dense, dense[:1]])
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    count = max(8, int(round(arc[-1] / spacing)))
    at = np.linspace(0, arc[-1], count, endpoint=False)
    return np.stack([np.interp(at, arc, closed[:, 0]), np.interp(at, arc, closed[:, 1])], 1)


def spline_rings(outline: np.ndarray, holes: list[np.ndarray], spacing: float) -> list[np.ndarray]:
    """The region's boundary polylines: the outline's spline first, then each hole's."""
    return [closed_spline(ring, spacing) for ring in [outline, *holes]]


def region_mask(rings: list[np.ndarray], size: int, supersample: int = 4) -> np.ndarray:
    """Boolean (size, size) mask inside ``rings[0]`` and outside the others, rasterised with sub-pixel
    precision from exactly these polylines."""
    shift = int(np.log2(supersample))
    mask = np.zeros((size, size), np.uint8)
    for index, ring in enumerate(rings):
        cv2.fillPoly(mask, [np.round(ring * supersample).astype(np.int32)], int(index == 0),
                     lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def triangulate_region(outline: np.ndarray, holes: list[np.ndarray], spacing: float, size: int):
    """Points and triangles covering the region: rings on the boundaries, a regular lattice inside.

    Lattice cells whose corners all keep 1.5 spacings from every ring are split directly into two
    triangles. Only the band near the rings goes through Delaunay: no ring point can fall inside
    such a cell's circumcircle (radius 0.71 spacing), so both parts share the cells' edges exactly.
    Returns points (N, 2), ring samples first, and triangles (F, 3) int32.
    """
    rings = spline_rings(outline, holes, spacing)
    boundary = np.vstack(rings)
    axis, inside, clearance = _lattice_nodes(rings, spacing, size)
    kept = inside & (clearance > 0.6)              # lattice nodes that keep clear of every ring
    core = inside & (clearance > 1.5)
    node_index = np.full(kept.shape, -1, np.int64)
    node_index[kept] = len(boundary) + np.arange(int(kept.sum()))
    rows, cols = np.nonzero(kept)
    points = np.vstack([boundary, np.stack([axis[cols], axis[rows]], 1)])

    full = core[:-1, :-1] & core[1:, :-1] & core[:-1, 1:] & core[1:, 1:]
    r, c = np.nonzero(full)
    a, b, d, e = node_index[r, c], node_index[r, c + 1], node_index[r + 1, c], node_index[r + 1, c + 1]
    lattice = np.concatenate([np.stack([a, d, e], 1), np.stack([a, e, b], 1)])

    # The band holds the rings and every corner of a cell the lattice does not cover, so each
    # uncovered cell is triangulated, whatever the distances' accuracy.
    uncovered = ~full & (kept[:-1, :-1] | kept[1:, :-1] | kept[:-1, 1:] | kept[1:, 1:])
    corner = np.zeros_like(kept)
    for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
        corner[dr:dr + uncovered.shape[0], dc:dc + uncovered.shape[1]] |= uncovered
    band = np.concatenate([np.arange(len(boundary)), node_index[kept & corner]])
    band_triangles = _band_triangles(points, band, rings, full, spacing, len(axis))
    return points, np.concatenate([lattice, band_triangles]).astype(np.int32)


def _lattice_nodes(rings: list[np.ndarray], spacing: float, size: int) -> tuple:
    """``(axis, inside, clearance)``: the lattice's coordinates along x and y, and per node [row, col]
    whether it lies in the region and its distance to the nearest ring in spacings."""
    mask = region_mask(rings, size)
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    axis = np.arange(spacing / 2, size, spacing)
    node_px = np.clip(axis.astype(np.int64), 0, size - 1)
    inside = mask[np.ix_(node_px, node_px)]           # [row (y), col (x)]
    clearance = distance[np.ix_(node_px, node_px)] / spacing
    # The raster is only good to half a pixel, about a third of a spacing: decide the nodes close to
    # the rings exactly, against the same ring polylines the Delaunay band uses.
    rows, cols = np.nonzero(inside & (clearance <= 3.0))
    xy = np.stack([axis[cols], axis[rows]], 1)
    exact = np.min([distance_to_ring(xy, ring) for ring in rings], axis=0)
    close = exact < 3.0  # fillPoly also paints the outline's own pixels: up to ~2 px of error
    within = points_in_polygon(xy[close], rings[0])
    for hole in rings[1:]:
        within &= ~points_in_polygon(xy[close], hole)
    inside[rows[close], cols[close]] = within
    clearance[rows, cols] = exact / spacing
    return axis, inside, clearance


def _band_triangles(points: np.ndarray, band: np.ndarray, rings: list[np.ndarray], full: np.ndarray,
                    spacing: float, nodes: int) -> np.ndarray:
    """Delaunay triangles of the band's points, less those in cells the lattice covers (``full``),
    outside the region, or bridging a concavity."""
    triangles = band[Delaunay(points[band], qhull_options="QJ Qbb Qc").simplices]
    cell = np.floor((points[triangles].mean(1) - spacing / 2) / spacing).astype(np.int64)
    in_range = (cell >= 0).all(1) & (cell < nodes - 1).all(1)
    keep = np.ones(len(triangles), bool)
    keep[in_range] = ~full[cell[in_range, 1], cell[in_range, 0]]  # the lattice already covers full cells
    # Delaunay fills the convex hull. Only triangles made of one ring's vertices can lie outside the
    # region (in a concavity of the outline, or inside a hole); test exactly those against the rings.
    boundary = sum(len(ring) for ring in rings)
    ring_of = np.full(len(points), -1)
    ring_of[:boundary] = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    corner_rings = ring_of[triangles]
    single_ring = (corner_rings[:, 0] >= 0) & (corner_rings == corner_rings[:, :1]).all(1)
    for index, ring in enumerate(rings):
        candidates = np.nonzero(keep & single_ring & (corner_rings[:, 0] == index))[0]
        inside_ring = points_in_polygon(points[triangles[candidates]].mean(1), ring)
        keep[candidates] = inside_ring if index == 0 else ~inside_ring
    edges = np.linalg.norm(points[triangles] - points[np.roll(triangles, 1, 1)], axis=2)
    keep &= edges.max(1) < 2.5 * spacing                  # bridges across concavities of the rings
    return triangles[keep]


def distance_to_ring(points: np.ndarray, ring: np.ndarray, subdivisions: int = 8) -> np.ndarray:
    """Distance from each point to a closed polyline, to within 1/(2*subdivisions) of a segment length
    (nearest sample of the densified polyline; a KD-tree keeps it fast for thousands of points)."""
    t = np.arange(subdivisions)[None, :, None] / subdivisions
    dense = (ring[:, None] + t * (np.roll(ring, -1, 0) - ring)[:, None]).reshape(-1, 2)
    return cKDTree(dense).query(points)[0]


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
    a, b = faces.ravel().astype(np.int64), np.roll(faces, -1, 1).ravel().astype(np.int64)
    keys = np.minimum(a, b) * vertex_count + np.maximum(a, b)  # one integer per undirected edge
    unique, counts = np.unique(keys, return_counts=True)
    open_edges = unique[counts == 1]
    flags = np.zeros(vertex_count, bool)
    flags[open_edges // vertex_count] = True
    flags[open_edges % vertex_count] = True
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
