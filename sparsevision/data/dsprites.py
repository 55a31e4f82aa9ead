"""dSprites-like shapes, mimicking VTAB's structured tasks `dsprites/label_x_position` and
`dsprites/label_orientation` (Zhai et al. 2019), plus an easy `dsprites_shape`.

The latent grid follows dSprites (Matthey et al. 2017): 3 shapes (square, ellipse, heart), 6 scales linearly
spaced in [0.5, 1], 40 orientations (here k * 9 degrees, k = 0..39; dSprites uses linspace(0, 2pi, 40), whose last
value repeats the first), 32 x and 32 y positions in [0, 1] (0 = left / top). Each example draws every latent
uniformly and independently, so splits are i.i.d. draws from the same grid (the original holds each grid point
once; VTAB splits it 60/20/20 at random, so VTAB's splits are also i.i.d. samples of that grid).

Labels are binned as VTAB does (`class_division_factor = original / new classes`, label = floor(index / factor)):
  dsprites_location:    16 classes, label = x_index // 2           (x_index in 0..31, x = x_index / 31)
  dsprites_orientation: 16 classes, label = floor(o_index / 2.5)   (o_index in 0..39, 2 or 3 angles per bin)
  dsprites_shape:        3 classes, label = shape index
As in dSprites, a square's orientation is only defined modulo 90 degrees and an ellipse's modulo 180, so the
orientation task has irreducible error on those shapes; the heart is asymmetric and defines all 360 degrees.

Unlike dSprites the sprite is drawn in a random named colour (so captions can mention it) unless colored=False,
on black, anti-aliased by 4x4 supersampling.
"""
from __future__ import annotations

import numpy as np

from .base import GeneratedDataset, float_to_uint8
from .raster import COLORS, paint, shape_coverage

SHAPE_NAMES = ("square", "ellipse", "heart")
NUM_SCALES, NUM_ORIENTATIONS, NUM_POSITIONS = 6, 40, 32
SCALES = np.linspace(0.5, 1.0, NUM_SCALES)
ORIENTATION_STEP_DEG = 360.0 / NUM_ORIENTATIONS
NUM_LOCATION_BINS, NUM_ORIENTATION_BINS = 16, 16
# Half-size of a scale-1 sprite and the span of its centre, as fractions of the image: the corner of a scale-1
# square turned 45 degrees reaches 0.15 * sqrt(2) = 0.212 < 0.22 from its centre, so no sprite is ever clipped.
HALF_SIZE, MARGIN = 0.15, 0.22
TASKS = ("location", "orientation", "shape")


def location_bin(x_index: int) -> int:
    return x_index * NUM_LOCATION_BINS // NUM_POSITIONS


def orientation_bin(o_index: int) -> int:
    return o_index * NUM_ORIENTATION_BINS // NUM_ORIENTATIONS


def _orientation_class_names() -> list[str]:
    names = []
    for b in range(NUM_ORIENTATION_BINS):
        members = [k for k in range(NUM_ORIENTATIONS) if orientation_bin(k) == b]
        lo, hi = members[0] * ORIENTATION_STEP_DEG, members[-1] * ORIENTATION_STEP_DEG
        names.append(f"rotated {lo:g} to {hi:g} degrees")
    return names


class DSpritesDataset(GeneratedDataset):
    family = "dsprites"  # the three tasks share images for the same seed, as VTAB's share dSprites

    def __init__(self, task: str, split: str = "train", image_size: int = 32, seed: int = 0,
                 num_examples: int | None = None, colored: bool = True):
        if task not in TASKS:
            raise ValueError(f"unknown dsprites task {task!r}; expected one of {', '.join(TASKS)}")
        super().__init__(f"dsprites_{task}", split, image_size, seed, num_examples)
        self.task = task
        self.colored = bool(colored)
        if task == "location":
            self.class_names = [f"horizontal position {b + 1} of {NUM_LOCATION_BINS}" for b in range(NUM_LOCATION_BINS)]
        elif task == "orientation":
            self.class_names = _orientation_class_names()
        else:
            self.class_names = list(SHAPE_NAMES)

    def draw_factors(self, rng: np.random.Generator) -> dict:
        shape, scale, orient, xi, yi, color = rng.integers(
            0, [len(SHAPE_NAMES), NUM_SCALES, NUM_ORIENTATIONS, NUM_POSITIONS, NUM_POSITIONS, len(COLORS)])
        return {
            "shape": SHAPE_NAMES[shape],
            "scale": float(SCALES[scale]),
            "orientation_deg": float(orient * ORIENTATION_STEP_DEG),
            "x": float(xi / (NUM_POSITIONS - 1)),
            "y": float(yi / (NUM_POSITIONS - 1)),
            "color": list(COLORS)[color] if self.colored else "white",
        }

    def label_of(self, factors: dict) -> int:
        if self.task == "location":
            return location_bin(round(factors["x"] * (NUM_POSITIONS - 1)))
        if self.task == "orientation":
            return orientation_bin(round(factors["orientation_deg"] / ORIENTATION_STEP_DEG))
        return SHAPE_NAMES.index(factors["shape"])

    def render(self, factors: dict, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        span = 1.0 - 2.0 * MARGIN
        cx, cy = (MARGIN + span * factors["x"]) * s, (MARGIN + span * factors["y"]) * s
        [(cov, box)] = shape_coverage(s, [factors["shape"]], cx, cy, HALF_SIZE * factors["scale"] * s,
                                      factors["orientation_deg"])
        canvas = np.zeros((s, s, 3))
        paint(canvas, cov, box, COLORS[factors["color"]])
        return float_to_uint8(canvas)
