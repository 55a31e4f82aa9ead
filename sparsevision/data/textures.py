"""Procedural textures, mimicking VTAB's natural task `dtd` (Describable Textures Dataset, Cimpoi et al. 2014).

DTD names a texture by the adjective a person would use ("striped", "chequered", "dotted", ...); here nine such
families are drawn procedurally and the class is the family alone. Everything else is a nuisance drawn per
example, so a model must learn the pattern, not memorise pixels: foreground and background colour (two distinct
named colours), period (1/8 to 1/3 of the image side), orientation, phases, and a per-family shape parameter
(dot radius, line width, wave amplitude, ring centre, ...). Below 64 px patterns are evaluated on a 2x
supersampled grid and box-filtered, so periods of 4 px at 32 px do not alias.
"""
from __future__ import annotations

import math

import numpy as np

from .base import GeneratedDataset, float_to_uint8
from .raster import COLORS

TEXTURES = ("striped", "chequered", "dotted", "wavy", "zigzagged", "grid", "blotchy", "speckled", "ringed")
TEXTURE_COLORS = {**COLORS, "black": (13 / 255, 13 / 255, 13 / 255), "grey": (128 / 255, 128 / 255, 128 / 255)}
MIN_PERIOD, MAX_PERIOD = 1 / 8, 1 / 3  # fractions of the image side


def _supersample(image_size: int) -> int:
    # The shortest period is image_size / 8 px: 2x2 samples keep it alias-free at small sizes; from 64 px up the
    # period is 8+ px and one sample per pixel suffices.
    return 2 if image_size < 64 else 1


def _soft(t: np.ndarray, sharpness: float = 4.0) -> np.ndarray:
    """Map a signed field to [0, 1] with a soft edge at 0 (ink where t > 0)."""
    return np.clip(0.5 + sharpness * t, 0.0, 1.0)


def _tri(t: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1 in [-1, 1], the sharp-cornered sibling of cos(2 pi t)."""
    return 4.0 * np.abs(t - np.floor(t + 0.5)) - 1.0


def pattern(texture: str, x: np.ndarray, y: np.ndarray, period: float, angle_deg: float,
            rng: np.random.Generator) -> np.ndarray:
    """Ink coverage in [0, 1] of one texture at points (x right, y up; image-side units)."""
    a = math.radians(angle_deg)
    u = (x * math.cos(a) + y * math.sin(a)) / period   # along the pattern's direction, in periods
    v = (-x * math.sin(a) + y * math.cos(a)) / period  # across it
    p1, p2 = rng.uniform(0.0, 1.0, 2)
    if texture == "striped":
        return _soft(np.sin(2 * math.pi * (u + p1)))
    if texture == "chequered":
        return _soft(np.sin(2 * math.pi * (u + p1)) * np.sin(2 * math.pi * (v + p2)))
    if texture == "dotted":
        radius = rng.uniform(0.18, 0.32)
        du, dv = (u + p1) % 1.0 - 0.5, (v + p2) % 1.0 - 0.5
        return _soft(radius - np.sqrt(du * du + dv * dv), 8.0)
    if texture == "wavy":
        amp, wavelength = rng.uniform(0.3, 0.6), rng.uniform(2.0, 3.5)
        return _soft(np.sin(2 * math.pi * (u + amp * np.sin(2 * math.pi * v / wavelength) + p1)))
    if texture == "zigzagged":
        amp, wavelength = rng.uniform(0.3, 0.6), rng.uniform(1.5, 3.0)
        return _soft(np.sin(2 * math.pi * (u + amp * _tri(v / wavelength) + p1)))
    if texture == "grid":
        width = rng.uniform(0.12, 0.25)
        du, dv = np.abs((u + p1) % 1.0 - 0.5), np.abs((v + p2) % 1.0 - 0.5)
        return _soft(np.maximum(du, dv) - (0.5 - width), 8.0)
    if texture == "blotchy":
        # A sum of random plane waves around the base frequency: a band-limited random field, thresholded at 0.
        k = 10
        freq = rng.uniform(0.6, 1.4, k) / period
        theta = rng.uniform(0.0, 2 * math.pi, k)
        phase = rng.uniform(0.0, 2 * math.pi, k)
        arg = (x[..., None] * (freq * np.cos(theta)) + y[..., None] * (freq * np.sin(theta))) * (2 * math.pi) + phase
        return _soft(np.cos(arg).sum(-1) / math.sqrt(k / 2), 2.0)
    if texture == "ringed":
        cx, cy = rng.uniform(-0.25, 1.25, 2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / period
        return _soft(np.sin(2 * math.pi * (r + p1)))
    raise ValueError(f"unknown texture {texture!r}; expected one of {', '.join(TEXTURES)}")


class TexturesDataset(GeneratedDataset):
    family = "textures"

    def __init__(self, split: str = "train", image_size: int = 32, seed: int = 0, num_examples: int | None = None):
        super().__init__("textures", split, image_size, seed, num_examples)
        self.class_names = list(TEXTURES)

    def draw_factors(self, rng: np.random.Generator) -> dict:
        texture = int(rng.integers(0, len(TEXTURES)))
        fg, bg = rng.choice(len(TEXTURE_COLORS), size=2, replace=False)
        names = list(TEXTURE_COLORS)
        return {
            "texture": TEXTURES[texture],
            "color": names[fg],
            "background_color": names[bg],
            # Log-uniform, so fine and coarse textures are equally common.
            "period": float(MIN_PERIOD * (MAX_PERIOD / MIN_PERIOD) ** rng.uniform()),
            "orientation_deg": float(rng.uniform(0.0, 180.0)),
        }

    def label_of(self, factors: dict) -> int:
        return TEXTURES.index(factors["texture"])

    def render(self, factors: dict, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        if factors["texture"] == "speckled":
            ink = rng.uniform(0.0, 1.0, (s, s))  # i.i.d. grain at pixel resolution: nothing to anti-alias
        else:
            ss = _supersample(s)
            n = s * ss
            coords = (np.arange(n) + 0.5) / n
            x, y = coords[None, :], 1.0 - coords[:, None]
            ink = pattern(factors["texture"], x, y, factors["period"], factors["orientation_deg"], rng)
            ink = np.broadcast_to(ink, (n, n)).reshape(s, ss, s, ss).mean(axis=(1, 3))
        fg = np.asarray(TEXTURE_COLORS[factors["color"]])
        bg = np.asarray(TEXTURE_COLORS[factors["background_color"]])
        return float_to_uint8(bg + ink[..., None] * (fg - bg))
