"""A head reply's fitted lighting as a Blender world (bpy-free): the spherical-harmonics lighting of
the photometric refinement (``meta["lighting"]``, in Blender's world frame) painted into an
equirectangular environment, so the first render of the head is lit like the photo.

The refinement models a photo pixel as albedo x ``E(n)`` (``wire.sh``); Blender's diffuse BSDF
gives albedo x ``E(n) / pi`` under an environment of radiance ``L``, so the environment holds ``pi``
times the radiance. Second-order SH radiance has negative lobes (a side light rings behind the
head), which an environment cannot emit; clamping them brightens the unlit side (median error 28 %
over all normals for a side light). Instead the environment is a non-negative radiance whose bands
0-2 are the fitted ones, found from the clamped one by projected Landweber iterations: diffuse
shading then matches the fitted irradiance to about 1 % (the higher bands it gains change it little).
"""
from __future__ import annotations

import numpy as np

from ..wire import sh

ENVIRONMENT_HEIGHT = 32  # second-order SH vary slowly: on 64 x 32 pixels the basis stays orthonormal to 0.2 %
ITERATIONS = 200
BACKDROP = (0.0509, 0.0509, 0.0509)  # what camera rays see: the grey of Blender's default world


def _latitudes(height: int) -> np.ndarray:
    """Latitude of each equirectangular pixel row's centre, bottom row first (radians)."""
    return ((np.arange(height) + 0.5) / height - 0.5) * np.pi


def directions(height: int) -> np.ndarray:
    """(H, 2H, 3) unit directions at an equirectangular image's pixel centres, rows bottom-up, in
    Blender's mapping: ``u = 0.5 - atan2(y, x) / 2pi``, ``v = 0.5 + asin(z) / pi``."""
    width = 2 * height
    phi = (0.5 - (np.arange(width) + 0.5) / width) * 2 * np.pi
    theta = _latitudes(height)
    cos_theta = np.cos(theta)[:, None]
    return np.stack([cos_theta * np.cos(phi), cos_theta * np.sin(phi),
                     np.broadcast_to(np.sin(theta)[:, None], (height, width))], -1)


def solid_angles(height: int) -> np.ndarray:
    """(H, 2H) solid angle of each equirectangular pixel (they sum to 4 pi)."""
    return np.repeat((np.cos(_latitudes(height)) * (np.pi / height) ** 2)[:, None], 2 * height, 1)


def environment(coefficients, height: int = ENVIRONMENT_HEIGHT) -> np.ndarray:
    """(H, 2H, 4) float32 linear RGBA environment for the lighting ``coefficients`` (9, 3), rows bottom-up."""
    target = np.asarray(coefficients, np.float64)
    basis = sh.radiance_basis(directions(height)).reshape(-1, sh.COUNT)
    project = basis * solid_angles(height).reshape(-1, 1)  # radiance -> its SH coefficients
    radiance = np.clip(basis @ target, 0.0, None)
    for _ in range(ITERATIONS):  # the basis is orthonormal, so step 1 converges
        radiance = np.clip(radiance - basis @ (project.T @ radiance - target), 0.0, None)
    pixels = np.ones((height, 2 * height, 4), np.float32)
    pixels[..., :3] = (np.pi * radiance).reshape(height, 2 * height, 3)
    return pixels


def photo_lighting(meta: dict):
    """The (9, 3) coefficients of a head reply's meta in Blender's world frame, or None (no refinement)."""
    lighting = meta.get("lighting") or {}
    coefficients = np.asarray(lighting.get("sh", ()), np.float64)
    if lighting.get("frame") != "blender world" or coefficients.shape != (sh.COUNT, 3):
        return None
    return coefficients if np.isfinite(coefficients).all() else None
