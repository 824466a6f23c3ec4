"""Model-free face geometry: FaceMesh landmarks (crop pixels) -> smooth height field -> metric mesh.

Torch-free: the thin-plate surface (``surface``), the rim and lattice meshing (``meshing``) and the
metric frame (face width ``FACE_WIDTH_M``) meet here.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import landmarks as lm
from . import meshing
from .surface import fit_height_field

FACE_WIDTH_M = 0.14  # bizygomatic width of an average adult face: sets the metric scale
SILHOUETTE_WEIGHT = 0.1
# Landmark pairs mirrored across the face's midline (image-left, image-right): eye corners, mouth corners.
MIRROR_PAIRS = ((33, 263), (133, 362), (61, 291))


def yaw_rotation(points: np.ndarray) -> np.ndarray:
    """3x3 rotation about the image's vertical axis that turns the face to the camera.

    In the crop frame (x right, y down, z toward the viewer), the line from each image-left landmark
    to its mirror partner is the face's left-right axis; a turned head tilts it in depth. Rotating it
    back into the image plane puts the face in its own frontal frame, where it is a height field
    without folds even when the photo shows it at 30 degrees or more."""
    left = points[[a for a, _ in MIRROR_PAIRS]]
    right = points[[b for _, b in MIRROR_PAIRS]]
    axis = (right - left).sum(0)
    yaw = np.arctan2(axis[2], axis[0])
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


class FaceGeometry:
    """Landmarks (crop pixels) -> smooth height field, region outline and metric mesh.

    Everything is built in the face's own frontal frame (``yaw_rotation`` about the landmarks' centre);
    ``rotation`` (Blender axes) turns the mesh back to the photo's view, and UVs point at the pixels the
    frontal points came from."""

    def __init__(self, points: np.ndarray, config):
        self.config = config
        self.pivot = points[:lm.SURFACE_LANDMARKS].mean(0)
        self.frontalize = yaw_rotation(points)
        points = self._frontal(points)
        surface = points[:lm.SURFACE_LANDMARKS]
        # Silhouette landmarks have the least reliable depth (the surface is edge-on there); letting
        # them pull less keeps the fit from rippling along the rim.
        weights = np.ones(len(surface))
        weights[lm.FACE_OVAL] = SILHOUETTE_WEIGHT
        self.field = fit_height_field(surface, weights)
        self.pixel_width = float(np.linalg.norm(points[lm.LEFT_CHEEK] - points[lm.RIGHT_CHEEK]))
        self.scale = FACE_WIDTH_M / self.pixel_width
        oval = surface[lm.FACE_OVAL, :2]
        centre = oval.mean(0)
        radius = float(np.linalg.norm(oval - centre, axis=1).mean())
        self.outline = centre + (oval - centre) * (1 - config.contour_inset * self.pixel_width / radius)
        gap = float(np.linalg.norm(points[lm.UPPER_LIP_MID, :2] - points[lm.LOWER_LIP_MID, :2]))
        self.mouth_open = gap > 0.02 * self.pixel_width  # parted lips: a hole, not a sheet across the mouth
        self.holes = [surface[lm.INNER_LIPS, :2]] if self.mouth_open else []
        self.rim_height = self._rim_height()
        self.centre = np.array([(self.outline[:, 0].min() + self.outline[:, 0].max()) / 2,
                                (self.outline[:, 1].min() + self.outline[:, 1].max()) / 2])

    def _rim_height(self) -> float:
        """The mean height along the outline: the mesh's zero depth (``to_metres``)."""
        return float(self.field.sample(meshing.closed_spline(self.outline, 2.0)).mean())

    def use_field(self, field) -> None:
        """Swap in another surface (anything with ``sample(xy)``, e.g. the landmark field fused with a
        depth network's); the rim height, the mesh's depth origin, follows it."""
        self.field = field
        self.rim_height = self._rim_height()

    def _frontal(self, points: np.ndarray) -> np.ndarray:
        return (points - self.pivot) @ self.frontalize.T + self.pivot

    def seen_at(self, xy: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Frontal-frame pixels + heights -> (N, 3) crop pixels and camera depth (z larger = nearer)."""
        frontal = np.column_stack([xy, heights])
        return (frontal - self.pivot) @ self.frontalize + self.pivot

    def to_crop(self, xy: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Frontal-frame pixels + heights -> the crop pixels they were seen at (for UVs)."""
        return self.seen_at(xy, heights)[:, :2]

    @property
    def rotation(self) -> np.ndarray:
        """Frontal mesh -> photo view, in Blender axes (crop x -> X, crop y -> -Z, crop z -> -Y)."""
        to_blender = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
        return to_blender @ self.frontalize.T @ to_blender.T

    def landmarks_metres(self, points: np.ndarray) -> np.ndarray:
        """Crop-pixel landmarks -> mesh space (frontal frame, metres), on the fitted surface."""
        xy = self._frontal(points)[:, :2]
        return self.to_metres(xy, self.field.sample(xy))

    @property
    def yaw_degrees(self) -> float:
        return float(np.degrees(np.arctan2(self.frontalize[0, 2], self.frontalize[0, 0])))

    def to_metres(self, xy: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Crop pixels + heights -> Blender axes in metres: X right, Z up, nearer = more negative Y."""
        x = (xy[:, 0] - self.centre[0]) * self.scale
        z = -(xy[:, 1] - self.centre[1]) * self.scale
        y = -(heights - self.rim_height) * self.scale
        return np.stack([x, y, z], 1).astype(np.float32)

    def grid_centres(self, resolution: int) -> np.ndarray:
        """(R * R, 2) pixel centres of an R x R grid over the texture square, row by row."""
        rows, cols = np.mgrid[0:resolution, 0:resolution]
        return (np.stack([cols.ravel(), rows.ravel()], 1) + 0.5) * (self.config.texture_size / resolution)

    def region_mask(self, resolution: int) -> np.ndarray:
        """The face region (outline minus an open mouth) on an R x R grid over the texture square, frontal frame."""
        scale = resolution / self.config.texture_size
        return meshing.region_mask(meshing.spline_rings(self.outline * scale, [h * scale for h in self.holes], 0.5),
                                   resolution)

    def seen_region_mask(self, resolution: int) -> np.ndarray:
        """The face region as the camera sees it, on an R x R grid over the crop (where the texture lives).

        Not the projected outline: on a turned face the far rim is hidden and projects inside the face,
        while the far cheek reaches the silhouette. So the region's points are projected one by one."""
        frontal = self.grid_centres(resolution)[self.region_mask(resolution).ravel()]
        seen = self.to_crop(frontal, self.field.sample(frontal)) * (resolution / self.config.texture_size)
        cols, rows = np.clip(np.floor(seen).astype(int), 0, resolution - 1).T
        mask = np.zeros((resolution, resolution), np.uint8)
        mask[rows, cols] = 1
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)).astype(bool)

    def visible(self, resolution: int, region: np.ndarray) -> np.ndarray:
        """Which points of an R x R frontal grid inside ``region`` the camera sees (not turned away, not
        behind the nose). The yaw turns about the image's vertical axis, so a point can only be hidden
        by points of its own row: per row, it is hidden when a segment of the row's profile (as seen,
        orthographically) lies in front of it at the same crop x."""
        centres = self.grid_centres(resolution)
        seen = self.seen_at(centres, self.field.sample(centres)).reshape(resolution, resolution, 3)
        visible = region.copy()
        for row in np.flatnonzero(region.any(1)):
            x, z, inside = seen[row, :, 0], seen[row, :, 2], region[row]
            use = inside[:-1] & inside[1:]
            a, b, za, zb = x[:-1][use], x[1:][use], z[:-1][use], z[1:][use]
            points = np.flatnonzero(inside)
            px, pz = x[points, None], z[points, None]
            covers = (np.minimum(a, b) <= px) & (px <= np.maximum(a, b)) & (a != b)
            along = np.where(covers, (px - a) / np.where(a != b, b - a, 1.0), 0.0)
            in_front = covers & (za + along * (zb - za) > pz + 0.25)  # a quarter pixel: not its own segments
            visible[row, points] = ~in_front.any(1)
        return visible

    def depth_map(self, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, R) height in metres in front of the face's deepest point (0 outside the mask), and the mask,
        in the face's frontal frame (the crop's own frame when the photo is frontal)."""
        mask = self.region_mask(resolution)
        heights = self.field.sample(self.grid_centres(resolution)[mask.ravel()])
        depth = np.zeros((resolution, resolution), np.float32)
        depth[mask] = (heights - heights.min()) * self.scale
        return depth, mask

    def mesh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = self.config.texture_size
        spacing = self.pixel_width / self.config.resolution
        points, faces = meshing.triangulate_region(self.outline, self.holes, spacing, size)
        faces = meshing.face_the_viewer(points, faces)
        vertices = self.to_metres(points, self.field.sample(points))
        faces = meshing.remove_spikes(vertices, faces)
        faces = meshing.largest_component(len(vertices), faces)
        faces, vertices, points = meshing.compact(faces, vertices, points)
        vertices = meshing.taubin_smooth(vertices, faces, self.config.taubin_passes)
        seen_at = self.to_crop(points, self.field.sample(points))
        uvs = np.stack([seen_at[:, 0] / size, 1.0 - seen_at[:, 1] / size], 1).astype(np.float32)
        return vertices, faces, uvs
