"""Model-free face geometry: FaceMesh landmarks (crop pixels) -> smooth height field -> metric mesh.

Torch-free: the thin-plate surface (``surface``), the rim and lattice meshing (``meshing``) and the
metric frame (face width ``FACE_WIDTH_M``) meet here.
"""
from __future__ import annotations

import numpy as np

from . import landmarks as lm
from . import meshing
from .surface import fit_height_field

FACE_WIDTH_M = 0.14  # bizygomatic width of an average adult face: sets the metric scale
SILHOUETTE_WEIGHT = 0.1


class FaceGeometry:
    """Landmarks (crop pixels) -> smooth height field, region outline and metric mesh."""

    def __init__(self, points: np.ndarray, config):
        self.config = config
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
        rim = meshing.closed_spline(self.outline, 2.0)
        self.rim_height = float(self.field.sample(rim).mean())
        self.centre = np.array([(self.outline[:, 0].min() + self.outline[:, 0].max()) / 2,
                                (self.outline[:, 1].min() + self.outline[:, 1].max()) / 2])

    def to_metres(self, xy: np.ndarray, heights: np.ndarray) -> np.ndarray:
        """Crop pixels + heights -> Blender axes in metres: X right, Z up, nearer = more negative Y."""
        x = (xy[:, 0] - self.centre[0]) * self.scale
        z = -(xy[:, 1] - self.centre[1]) * self.scale
        y = -(heights - self.rim_height) * self.scale
        return np.stack([x, y, z], 1).astype(np.float32)

    def depth_map(self, resolution: int) -> tuple[np.ndarray, np.ndarray]:
        """(R, R) height in metres in front of the face's deepest point (0 outside the mask), and the mask."""
        size = self.config.texture_size
        scale = resolution / size
        mask = meshing.region_mask(meshing.spline_rings(self.outline * scale, [h * scale for h in self.holes], 0.5),
                                   resolution)
        rows, cols = np.nonzero(mask)
        centres = (np.stack([cols, rows], 1) + 0.5) * (size / resolution)
        heights = self.field.sample(centres)
        depth = np.zeros((resolution, resolution), np.float32)
        depth[rows, cols] = (heights - heights.min()) * self.scale
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
        uvs = np.stack([points[:, 0] / size, 1.0 - points[:, 1] / size], 1).astype(np.float32)
        return vertices, faces, uvs
