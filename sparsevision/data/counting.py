"""CLEVR-count-like scenes, mimicking VTAB's structured task `clevr(task="count_all")` (Zhai et al. 2019).

VTAB's count_all labels a CLEVR scene (Johnson et al. 2017) by its number of objects, 3..10, as 8 classes
(label = count - 3); that is the default here. A scene is a grey floor lit from above (a vertical gradient with
fine grey grain) holding N flat objects: circle, square or triangle (CLEVR's sphere, cube and cylinder seen from
above), small or large, in one of nine saturated colours, at a random rotation.

Objects sit in N distinct cells of a 4x4 grid with a bounded jitter, so they never touch: each reaches at most
0.4 of a cell from its cell centre, leaving a gap of at least 0.2 cells (1.6 px at 32 px) between neighbours.
That keeps the count well defined at small image sizes, where CLEVR's occlusions would make it ambiguous: from
32 px up, connected components of the saturated pixels recover the count exactly (the tests check this); at 16 px
small objects start to blur together and the task is no longer exactly solvable.
"""
from __future__ import annotations

import numpy as np

from .base import GeneratedDataset, float_to_uint8
from .raster import COLORS, SHAPE_EXTENT, paint, shape_coverage

GRID = 4
OBJECT_SHAPES = ("circle", "square", "triangle")
OBJECT_COLORS = ("red", "green", "blue", "yellow", "cyan", "magenta", "purple", "brown", "orange")
# Reach of an object from its centre, as a fraction of the cell side (CLEVR has two sizes, small and large).
OBJECT_SIZES = {"small": 0.25, "large": 0.35}
MAX_REACH = 0.4  # centre jitter + object reach never exceeds this, so neighbours keep a 2 * (0.5 - 0.4) gap
FLOOR_TOP, FLOOR_BOTTOM, GRAIN = 0.30, 0.55, 0.015


class CountingDataset(GeneratedDataset):
    family = "counting"

    def __init__(self, split: str = "train", image_size: int = 32, seed: int = 0, num_examples: int | None = None,
                 min_count: int = 3, max_count: int = 10):
        super().__init__("counting", split, image_size, seed, num_examples)
        if not (isinstance(min_count, int) and isinstance(max_count, int) and 1 <= min_count <= max_count <= GRID ** 2):
            raise ValueError(f"counting: need 1 <= min_count <= max_count <= {GRID ** 2}, "
                             f"got min_count={min_count!r}, max_count={max_count!r}")
        self.min_count, self.max_count = min_count, max_count
        self.class_names = [f"{n} object" + ("s" if n != 1 else "") for n in range(min_count, max_count + 1)]

    def draw_factors(self, rng: np.random.Generator) -> dict:
        n = int(rng.integers(self.min_count, self.max_count + 1))
        cells = rng.choice(GRID * GRID, size=n, replace=False)
        shapes = rng.integers(0, len(OBJECT_SHAPES), n)
        colors = rng.integers(0, len(OBJECT_COLORS), n)
        sizes = rng.integers(0, len(OBJECT_SIZES), n)
        jitter = rng.uniform(-1.0, 1.0, (n, 2))
        angles = rng.uniform(0.0, 360.0, n)
        objects = []
        for k in range(n):
            size_name = list(OBJECT_SIZES)[sizes[k]]
            slack = MAX_REACH - OBJECT_SIZES[size_name]
            row, col = divmod(int(cells[k]), GRID)
            objects.append({
                "shape": OBJECT_SHAPES[shapes[k]],
                "color": OBJECT_COLORS[colors[k]],
                "size": size_name,
                "x": float((col + 0.5 + slack * jitter[k, 0]) / GRID),
                "y": float((row + 0.5 + slack * jitter[k, 1]) / GRID),
                "orientation_deg": float(angles[k]),
            })
        return {"count": n, "objects": objects}

    def label_of(self, factors: dict) -> int:
        return factors["count"] - self.min_count

    def render(self, factors: dict, rng: np.random.Generator) -> np.ndarray:
        s = self.image_size
        rows = np.linspace(FLOOR_TOP, FLOOR_BOTTOM, s)[:, None]
        # Grey grain (equal in all channels) so the floor stays colourless, as CLEVR's is.
        floor = rows + GRAIN * rng.standard_normal((s, s))
        canvas = np.repeat(floor[..., None], 3, axis=2)
        objects = factors["objects"]
        cell = s / GRID
        reach = np.array([OBJECT_SIZES[o["size"]] for o in objects]) * cell
        shapes = [o["shape"] for o in objects]
        half = reach / np.array([SHAPE_EXTENT[name] for name in shapes])
        covered = shape_coverage(s, shapes, [o["x"] * s for o in objects], [o["y"] * s for o in objects], half,
                                 [o["orientation_deg"] for o in objects])
        for obj, (cov, box) in zip(objects, covered):
            paint(canvas, cov, box, COLORS[obj["color"]])
        return float_to_uint8(canvas)
