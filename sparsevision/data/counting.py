"""CLEVR-count-like scenes, mimicking VTAB's structured task `clevr(task="count_all")` (Zhai et al. 2019).

VTAB's count_all labels a CLEVR scene (Johnson et al. 2017) by its number of objects, 3..10, as 8 classes
(label = count - 3); that is the default here. A scene is a grey floor lit from above (a vertical gradient with
fine grey grain) holding N flat objects: circle, square or triangle (CLEVR's sphere, cube and cylinder seen from
above), small or large, in one of nine saturated colours, at a random rotation.

Objects are placed as CLEVR's own generator places them (`render_images.py`): each at a uniformly random position,
rejected and redrawn if it comes too close to one already placed, starting over if the scene jams. Here "too
close" means closer than two large objects' reach plus a gap of 0.05 of the image side (1.6 px at 32 px), so
objects never touch. That keeps the count well defined at small image sizes, where CLEVR's occlusions would make
it ambiguous: from 32 px up, connected components of the saturated pixels recover the count exactly (the tests
check this); at 16 px small objects start to blur together and the task is no longer exactly solvable. Positions
are not on a grid, so an object may straddle ViT patches and a patch may hold two objects.
"""
from __future__ import annotations

import numpy as np

from .base import GeneratedDataset, float_to_uint8
from .raster import COLORS, SHAPE_EXTENT, paint, shape_coverage

OBJECT_SHAPES = ("circle", "square", "triangle")
OBJECT_COLORS = ("red", "green", "blue", "yellow", "cyan", "magenta", "purple", "brown", "orange")
# Reach of an object from its centre, as a fraction of the image side (CLEVR has two sizes, small and large).
OBJECT_SIZES = {"small": 0.0625, "large": 0.0875}
GAP = 0.05
MIN_DISTANCE = 2 * max(OBJECT_SIZES.values()) + GAP  # between centres, whatever the two sizes turn out to be
# Random sequential placement jams (no room left) at about 55% disc coverage; 10 objects at MIN_DISTANCE need
# about 36%, so restarts are rare, but more than 10 would make them frequent: CLEVR also stops at 10.
MAX_OBJECTS = 10
_CANDIDATES, _BATCHES_BEFORE_RESTART = 64, 40
FLOOR_TOP, FLOOR_BOTTOM, GRAIN = 0.30, 0.55, 0.015


def place_objects(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """n centres in the unit square, pairwise at least MIN_DISTANCE apart and clear of the border."""
    lo, hi = max(OBJECT_SIZES.values()), 1.0 - max(OBJECT_SIZES.values())
    placed: list[tuple[float, float]] = []
    batches = 0
    while len(placed) < n:
        batches += 1
        if batches > _BATCHES_BEFORE_RESTART:  # jammed: start the scene over, as CLEVR's generator does
            placed, batches = [], 1
        # Plain Python floats: for at most 10 objects this beats building distance matrices in numpy.
        for x, y in rng.uniform(lo, hi, (_CANDIDATES, 2)).tolist():
            if all((x - a) ** 2 + (y - b) ** 2 >= MIN_DISTANCE ** 2 for a, b in placed):
                placed.append((x, y))
                if len(placed) == n:
                    break
    return placed


class CountingDataset(GeneratedDataset):
    family = "counting"

    def __init__(self, split: str = "train", image_size: int = 32, seed: int = 0, num_examples: int | None = None,
                 min_count: int = 3, max_count: int = 10):
        super().__init__("counting", split, image_size, seed, num_examples)
        if not (isinstance(min_count, int) and isinstance(max_count, int) and 1 <= min_count <= max_count <= MAX_OBJECTS):
            raise ValueError(f"counting: need 1 <= min_count <= max_count <= {MAX_OBJECTS}, "
                             f"got min_count={min_count!r}, max_count={max_count!r}")
        self.min_count, self.max_count = min_count, max_count
        self.class_names = [f"{n} object" + ("s" if n != 1 else "") for n in range(min_count, max_count + 1)]

    def draw_factors(self, rng: np.random.Generator) -> dict:
        n = int(rng.integers(self.min_count, self.max_count + 1))
        shapes = rng.integers(0, len(OBJECT_SHAPES), n)
        colors = rng.integers(0, len(OBJECT_COLORS), n)
        sizes = rng.integers(0, len(OBJECT_SIZES), n)
        angles = rng.uniform(0.0, 360.0, n)
        objects = [{
            "shape": OBJECT_SHAPES[shapes[k]],
            "color": OBJECT_COLORS[colors[k]],
            "size": list(OBJECT_SIZES)[sizes[k]],
            "x": x,
            "y": y,
            "orientation_deg": float(angles[k]),
        } for k, (x, y) in enumerate(place_objects(rng, n))]
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
        reach = np.array([OBJECT_SIZES[o["size"]] for o in objects]) * s
        shapes = [o["shape"] for o in objects]
        half = reach / np.array([SHAPE_EXTENT[name] for name in shapes])
        covered = shape_coverage(s, shapes, [o["x"] * s for o in objects], [o["y"] * s for o in objects], half,
                                 [o["orientation_deg"] for o in objects])
        for obj, (cov, box) in zip(objects, covered):
            paint(canvas, cov, box, COLORS[obj["color"]])
        return float_to_uint8(canvas)
