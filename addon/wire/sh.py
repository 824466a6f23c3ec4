"""Second-order spherical harmonics as a head reply's ``lighting.sh`` carries them: one convention
for the server, which estimates the lighting, and the add-on, which lights a scene with it.

``sh`` is (9, 3), one column per linear RGB channel: the distant radiance arriving from direction
``w`` is ``L(w) = sum_k sh[k] * Y_k(w)``, and a Lambertian surface of normal ``n`` receives the
irradiance ``E(n) = sum_k KERNEL[k] * sh[k] * Y_k(n)`` (Ramamoorthi & Hanrahan 2001: the clamped
cosine's bands are ``pi``, ``2 pi / 3``, ``pi / 4``). The photo's pixel is albedo x ``E(n)``.

Basis order (real SH, orthonormal on the sphere; ``x, y, z`` a unit direction in the frame the
coefficients live in): ``1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2``.
"""
from __future__ import annotations

import math

import numpy as np

COUNT = 9
Y = (0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi)), math.sqrt(3 / (4 * math.pi)),
     math.sqrt(3 / (4 * math.pi)), 0.5 * math.sqrt(15 / math.pi), 0.5 * math.sqrt(15 / math.pi),
     0.25 * math.sqrt(5 / math.pi), 0.5 * math.sqrt(15 / math.pi), 0.25 * math.sqrt(15 / math.pi))
BAND = (0, 1, 1, 1, 2, 2, 2, 2, 2)
KERNEL = tuple((math.pi, 2 * math.pi / 3, math.pi / 4)[band] for band in BAND)  # clamped cosine per band


def radiance_basis(directions, stack=np.stack):
    """(..., 3) unit directions -> (..., 9) ``Y_k``; ``stack`` joins the terms (``torch.stack`` for tensors)."""
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    terms = (x * 0 + 1, y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y)
    return stack([c * t for c, t in zip(Y, terms)], -1)
