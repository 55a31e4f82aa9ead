"""Anti-aliased rasterisation of simple filled shapes, shared by the dSprites-like and CLEVR-count-like generators.

A shape is an implicit "inside" test in its own unit frame; a pixel's value is the fraction of ss x ss sub-pixel
samples inside it (box-filter supersampling). Only each shape's bounding box is sampled, so the cost does not grow
with image_size for small objects.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

# Named colours: names are what captions and prompts will say, so keep them plain words. Defined in 0..255 so that
# a fully covered pixel lands on an integer level, never on a rounding boundary of the uint8 quantisation.
COLORS_255: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "red": (230, 25, 25),
    "green": (25, 190, 50),
    "blue": (40, 75, 255),
    "yellow": (240, 230, 25),
    "cyan": (25, 215, 230),
    "magenta": (230, 40, 215),
    "orange": (255, 140, 15),
    "purple": (140, 50, 215),
    "brown": (140, 75, 25),
}
COLORS: dict[str, tuple[float, float, float]] = {k: tuple(c / 255.0 for c in v) for k, v in COLORS_255.items()}


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _ellipse(u, v):
    # dSprites' ellipse is elongated about 2:1 along its own x axis.
    return u * u + 4.0 * v * v <= 1.0


def _heart(u, v):
    # The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 spans x in [-1.14, 1.14], y in [-1, 1.24];
    # scale and shift it into the unit square so every shape has the same footprint at the same scale.
    x = 1.14 * u
    y = 1.14 * v + 0.12
    r = x * x + y * y - 1.0
    return r * r * r - x * x * y * y * y <= 0.0


def _circle(u, v):
    return u * u + v * v <= 1.0


def _triangle(u, v):
    # Equilateral, circumradius 1, apex up.
    return (v >= -0.5) & (v <= 1.0 - math.sqrt(3.0) * np.abs(u))


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "square": _square, "ellipse": _ellipse, "heart": _heart, "circle": _circle, "triangle": _triangle,
}
# Radius of the smallest circle around the unit-frame shape, to bound its pixels under any rotation.
SHAPE_EXTENT = {"square": math.sqrt(2.0), "ellipse": 1.0, "heart": 1.0, "circle": 1.0, "triangle": 1.0}


def shape_coverage(size: int, shapes: list[str], cx, cy, half_size, angle_deg, ss: int | None = None
                   ) -> list[tuple[np.ndarray, tuple[slice, slice]]]:
    """Coverage in [0, 1] of each of N shapes over its bounding box, with the (rows, cols) slices of that box.

    Pixel (r, c) covers [c, c+1) x [r, r+1) in image coordinates; (cx, cy) are centres in those coordinates
    (y down), `half_size` scales each unit-frame shape, and `angle_deg` turns it counter-clockwise on screen.
    All N shapes are sampled in one vectorised pass over equal P x P patches (P fits the largest), since
    per-object Python overhead, not arithmetic, dominates at small image sizes. `ss` defaults to 4x4 sub-samples
    for shapes under 16 px and 2x2 above, where an edge pixel is a small part of the shape.
    """
    cx, cy, half, angle = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (cx, cy, half_size, angle_deg))
    reach = np.array([SHAPE_EXTENT[s] for s in shapes]) * half
    c0, r0 = np.floor(cx - reach).astype(int), np.floor(cy - reach).astype(int)
    patch = int(np.ceil(2.0 * reach.max())) + 1
    if ss is None:
        ss = 4 if patch <= 16 else 2
    sub = (np.arange(patch * ss) + 0.5) / ss
    dx = (c0[:, None] + sub - cx[:, None])[:, None, :]    # [N, 1, Q]
    dy = (cy[:, None] - r0[:, None] - sub)[:, :, None]    # [N, Q, 1]; y up, so positive angles turn counter-clockwise
    t = np.radians(angle)[:, None, None]
    cos, sin, h = np.cos(t), np.sin(t), half[:, None, None]
    # Rotate the sample points by -angle, which is the same as rotating the shape by +angle.
    u = (dx * cos + dy * sin) / h
    v = (dy * cos - dx * sin) / h
    inside = np.empty(u.shape, dtype=bool)
    names = np.asarray(shapes)
    for name in set(shapes):
        sel = names == name
        inside[sel] = SHAPES[name](u[sel], v[sel])
    cov = inside.reshape(len(shapes), patch, ss, patch, ss).sum(axis=(2, 4)) * (1.0 / (ss * ss))
    out = []
    for k in range(len(shapes)):  # clip each patch to the image
        rs, cs = max(r0[k], 0), max(c0[k], 0)
        re, ce = min(r0[k] + patch, size), min(c0[k] + patch, size)
        out.append((cov[k, rs - r0[k]:max(re, rs) - r0[k], cs - c0[k]:max(ce, cs) - c0[k]],
                    (slice(rs, max(re, rs)), slice(cs, max(ce, cs)))))
    return out


def paint(canvas: np.ndarray, coverage: np.ndarray, box: tuple[slice, slice], color) -> None:
    """Alpha-composite a flat colour over an HxWx3 float canvas with the coverage as alpha (in place)."""
    alpha = coverage[..., None]
    region = canvas[box]
    region *= 1.0 - alpha
    region += alpha * np.asarray(color, dtype=np.float64)
