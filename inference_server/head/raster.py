"""A z-buffer triangle rasteriser in plain torch (CPU or CUDA, no compiled extension).

Visibility (which triangle owns each pixel) is found without gradients: triangles are grouped by
the size of their pixel bounding box, each group enumerates its candidate pixels in one batch, and
``scatter_reduce(amin)`` on a packed ``depth | triangle`` key keeps the nearest. Everything after
that (barycentrics, depth, attribute interpolation) is ordinary torch arithmetic on the projected
vertices, so gradients reach the vertices for a fixed visibility — what a photometric loss needs.

Conventions: camera frame x right, y down, z forward (OpenCV); pixel (col, row) covers
[col, col + 1) x [row, row + 1), so its centre is (col + 0.5, row + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TRIANGLE_BITS = 24                 # triangle ids below 16.7 M; depth gets the 38 bits above
DEPTH_LEVELS = float(2 ** 38 - 1)
CANDIDATES_PER_CHUNK = 1 << 21     # pixel candidates evaluated at once (memory ~ 100 MB)


@dataclass
class Raster:
    triangle: torch.Tensor   # (H, W) int64, -1 where no triangle covers the pixel centre
    bary: torch.Tensor       # (H, W, 3) perspective-correct barycentrics (0 where empty)
    depth: torch.Tensor      # (H, W) camera z of the visible surface (inf where empty)

    @property
    def mask(self) -> torch.Tensor:
        return self.triangle >= 0


def project(points: torch.Tensor, focal: float | torch.Tensor, principal) -> torch.Tensor:
    """Camera-frame points (N, 3) -> (N, 3) pixel x, pixel y, camera z (pinhole, square pixels)."""
    principal = torch.as_tensor(principal, dtype=points.dtype, device=points.device)
    z = points[:, 2:3]
    return torch.cat([focal * points[:, :2] / z + principal, z], 1)


def _pixel_barycentrics(screen: torch.Tensor, faces: torch.Tensor, triangle: torch.Tensor,
                        px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen-space barycentrics (..., 3) of points (px, py) in ``triangle`` and that triangle's
    signed doubled area; differentiable in ``screen``."""
    corners = screen[faces[triangle]]                          # (..., 3, 3)
    ax, ay = corners[..., 0, 0], corners[..., 0, 1]
    bx, by = corners[..., 1, 0], corners[..., 1, 1]
    cx, cy = corners[..., 2, 0], corners[..., 2, 1]
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
    l0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / safe
    l1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / safe
    return torch.stack([l0, l1, 1 - l0 - l1], -1), area


def _perspective(bary: torch.Tensor, corner_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen barycentrics -> perspective-correct ones and the depth (1/z is affine on screen)."""
    weighted = bary / corner_z
    inverse_depth = weighted.sum(-1, keepdim=True)
    return weighted / inverse_depth, 1.0 / inverse_depth.squeeze(-1)


def _edge_coefficients(corners: torch.Tensor) -> torch.Tensor:
    """(F, 2, 3): screen barycentrics l0, l1 of a triangle as affine functions a*x + b*y + c."""
    a, b, c = corners[:, 0, :2], corners[:, 1, :2], corners[:, 2, :2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    area = torch.where(area.abs() > 1e-12, area, torch.full_like(area, float("inf")))
    rows = []
    for p, q in ((b, c), (c, a)):   # l0 = cross(p - x, q - x) / area with (p, q) = (b, c), l1 with (c, a)
        rows.append(torch.stack([(p[:, 1] - q[:, 1]), (q[:, 0] - p[:, 0]), p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]], 1)
                    / area[:, None])
    return torch.stack(rows, 1)


def _box_class(side: torch.Tensor) -> torch.Tensor:
    """Bounding-box side -> candidate window side: exact up to 8 pixels, then the next power of two
    (few groups, at most 4x wasted candidates for the rare large triangles)."""
    return torch.where(side <= 8, side, 2 ** torch.ceil(torch.log2(side.float())).long())


def _candidate_keys(edges, inverse_z, x0, y0, x1, y1, ids, window, width, z_range):
    """Pixel index and ``depth | id`` key of every pixel centre that the triangles ``ids`` (boxes of
    at most ``window`` = (w, h) pixels from x0, y0) cover; uncovered candidates get the empty key."""
    cols = x0[:, None, None] + torch.arange(window[0], device=edges.device)[None, None, :]   # (n, 1, w)
    rows = y0[:, None, None] + torch.arange(window[1], device=edges.device)[None, :, None]   # (n, h, 1)
    fx, fy = cols.to(edges.dtype) + 0.5, rows.to(edges.dtype) + 0.5
    e = edges[:, :, :, None, None]
    l0 = e[:, 0, 0] * fx + e[:, 0, 1] * fy + e[:, 0, 2]
    l1 = e[:, 1, 0] * fx + e[:, 1, 1] * fy + e[:, 1, 2]
    l2 = 1 - l0 - l1
    iz = inverse_z[:, :, None, None]
    inverse_depth = l0 * iz[:, 0] + l1 * iz[:, 1] + l2 * iz[:, 2]
    covered = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (cols <= x1[:, None, None]) & (rows <= y1[:, None, None])
    level = ((1.0 / inverse_depth - z_range[0]) * (DEPTH_LEVELS / (z_range[1] - z_range[0])))
    key = (level.clamp(0, DEPTH_LEVELS).long() << TRIANGLE_BITS) | ids[:, None, None]
    key = torch.where(covered, key, torch.full_like(key, torch.iinfo(torch.int64).max))
    pixel = rows * width + cols
    return torch.broadcast_tensors(pixel, key)


@torch.no_grad()
def _visible_triangle(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int,
                      cull_sign: int) -> torch.Tensor:
    """(H*W,) id of the nearest triangle covering each pixel centre, -1 where none."""
    corners = screen[faces]                                          # (F, 3, 3)
    lo, hi = corners[..., :2].amin(1), corners[..., :2].amax(1)
    x0, y0 = torch.ceil(lo[:, 0] - 0.5).clamp(min=0).long(), torch.ceil(lo[:, 1] - 0.5).clamp(min=0).long()
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(max=width - 1).long()
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(max=height - 1).long()
    live = (corners[..., 2] > 0).all(1) & (x1 >= x0) & (y1 >= y0)
    edges = _edge_coefficients(corners)
    live &= torch.isfinite(edges).all(2).all(1)
    if cull_sign:
        a, b, c = corners[:, 0, :2], corners[:, 1, :2], corners[:, 2, :2]
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        live &= area * cull_sign > 0
    sentinel = torch.iinfo(torch.int64).max
    keys = torch.full((height * width,), sentinel, dtype=torch.int64, device=screen.device)
    if live.any():
        z = corners[live][..., 2]
        z_range = (float(z.min()), float(z.max()) + 1e-9)
        box_w, box_h = _box_class(x1 - x0 + 1), _box_class(y1 - y0 + 1)
        stride = height + width + 1
        live_ids = torch.nonzero(live).squeeze(1)
        group = (box_w * stride + box_h)[live_ids]
        order = torch.argsort(group)
        codes, counts = torch.unique_consecutive(group[order], return_counts=True)
        sorted_ids = live_ids[order]
        offset = 0
        for code, count in zip(codes.tolist(), counts.tolist()):
            kw, kh = divmod(code, stride)
            chunk = max(1, CANDIDATES_PER_CHUNK // (kw * kh))
            for start in range(offset, offset + count, chunk):
                part = sorted_ids[start:min(start + chunk, offset + count)]
                pixel, key = _candidate_keys(edges[part], 1.0 / corners[part, :, 2], x0[part], y0[part],
                                             x1[part], y1[part], part, (kw, kh), width, z_range)
                keys.scatter_reduce_(0, pixel.reshape(-1).clamp(max=height * width - 1), key.reshape(-1),
                                     reduce="amin")
            offset += count
    triangle = keys & ((1 << TRIANGLE_BITS) - 1)
    return torch.where(keys == sentinel, torch.full_like(keys, -1), triangle)


def rasterize(screen: torch.Tensor, faces: torch.Tensor, size: tuple[int, int],
              cull_backfaces: int = 0) -> Raster:
    """Z-buffer ``screen`` (N, 3: pixel x, pixel y, camera z > 0) triangles ``faces`` (F, 3) into an
    image of ``size`` (height, width). ``cull_backfaces`` = +1 / -1 keeps only triangles whose
    signed screen area has that sign (0 keeps all). Barycentrics and depth carry gradients to
    ``screen``; the triangle ids do not."""
    height, width = size
    faces = faces.long()
    triangle = _visible_triangle(screen.detach(), faces, height, width, cull_backfaces).view(height, width)
    bary, depth = pixel_surface(screen, faces, triangle)
    return Raster(triangle=triangle, bary=bary, depth=depth)


def pixel_surface(screen: torch.Tensor, faces: torch.Tensor, triangle: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Perspective-correct barycentrics (H, W, 3) and depth (H, W) at the pixel centres for a fixed
    visibility ``triangle`` (H, W); differentiable in ``screen``."""
    height, width = triangle.shape
    rows = torch.arange(height, device=screen.device, dtype=screen.dtype)[:, None].expand(height, width)
    cols = torch.arange(width, device=screen.device, dtype=screen.dtype)[None, :].expand(height, width)
    covered = triangle >= 0
    tri = triangle[covered]
    bary_screen, _ = _pixel_barycentrics(screen, faces.long(), tri, cols[covered] + 0.5, rows[covered] + 0.5)
    bary_persp, depth_covered = _perspective(bary_screen, screen[faces.long()[tri], 2])
    bary = torch.zeros(height, width, 3, dtype=screen.dtype, device=screen.device)
    depth = torch.full((height, width), float("inf"), dtype=screen.dtype, device=screen.device)
    bary = bary.index_put((covered,), bary_persp)
    depth = depth.index_put((covered,), depth_covered)
    return bary, depth


def interpolate(attributes: torch.Tensor, faces: torch.Tensor, raster: Raster) -> torch.Tensor:
    """Per-vertex attributes (N, C) -> per-pixel (H, W, C), zero where no triangle is visible.
    Gradients flow to ``attributes`` and, through ``raster.bary``, to the projected vertices."""
    tri = raster.triangle.clamp(min=0)
    corner_values = attributes[faces.long()[tri]]                       # (H, W, 3, C)
    values = (raster.bary[..., None] * corner_values).sum(-2)
    return values * raster.mask[..., None]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (N, 3) for counter-clockwise (outward) triangles."""
    faces = faces.long()
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    face_normals = torch.cross(b - a, c - a, dim=1)
    normals = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), face_normals.repeat_interleave(3, 0))
    return torch.nn.functional.normalize(normals, dim=1, eps=1e-12)


def vertex_facing(points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Cosine between each camera-frame normal and the direction to the camera (> 0 faces it)."""
    to_camera = torch.nn.functional.normalize(-points, dim=1)
    return (normals * to_camera).sum(1)


def vertex_visibility(screen: torch.Tensor, raster: Raster, eps: float) -> torch.Tensor:
    """(N,) bool: the vertex projects inside the image and lies within ``eps`` (camera-z units) of
    the z-buffer there — i.e. nothing nearer hides it."""
    height, width = raster.triangle.shape
    col = torch.floor(screen[:, 0]).long()
    row = torch.floor(screen[:, 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    depth = raster.depth[row.clamp(0, height - 1), col.clamp(0, width - 1)]
    return inside & (screen[:, 2] <= depth + eps)
