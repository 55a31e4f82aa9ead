"""The dataset interface every sparsevision data source implements, and the helpers they share.

Every source produces uint8 HxWx3 images first (as a decoded JPEG would be) and maps them to float32 [3, H, W] in
[-1, 1] last, exactly as big_vision's `value_range(-1, 1)` does (`x / 255 * 2 - 1`). Quantising to uint8 also makes
the generated tasks bit-identical across machines: a last-ulp difference of a vectorised libm `sin` or `exp` can
only change a pixel if it lands exactly on a rounding boundary.
"""
from __future__ import annotations

import operator
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
# Fixed small integers rather than hash(split): Python salts str hashes per process.
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 4:
        raise ValueError(f"image_size must be an int >= 4, got {image_size!r}")
    return int(image_size)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def example_rng(family: str, seed: int, split: str, index: int) -> np.random.Generator:
    """The Generator of one example: a pure function of (family, seed, split, index), so any index is O(1).

    SeedSequence hashes the whole tuple, so neighbouring seeds or indices give unrelated streams, and the three
    splits of one seed never share a stream. `family` (crc32, stable across processes) lets tasks that share
    images, like VTAB's dsprites_location / dsprites_orientation, share them, and unrelated generators not.
    """
    return np.random.default_rng([zlib.crc32(family.encode()), seed, _SPLIT_IDS[split], index])


def uint8_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> float32 [3, H, W] in [-1, 1] (big_vision `value_range(-1, 1)`)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 with round-half-even, the quantisation a PNG of the rendering would hold."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def stratified_split(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Deterministic per-class split: each class is shuffled with `seed`, then cut test | val | train.

    Returns sorted index arrays for "train", "val" and "test" that partition range(len(labels)). Per class,
    round(n * fraction) examples go to test and to val, the rest to train.
    """
    rng = np.random.default_rng([zlib.crc32(b"stratified_split"), seed])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(members) * test_fraction))
        n_val = int(round(len(members) * val_fraction))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test:n_test + n_val])
        parts["train"].append(members[n_test + n_val:])
    return {s: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for s, p in parts.items()}


class ImageDataset(Dataset):
    """A map-style dataset of (image, label): image float32 [3, S, S] in [-1, 1], label a Python int.

    Subclasses set `name`, `split`, `image_size`, `class_names` and implement `__len__`, `raw(i)` and `label(i)`;
    generated tasks also implement `factors(i)`.
    """

    name: str
    split: str
    image_size: int
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 HxWx3 image, label): the image before value_range, for plotting or captioning."""
        raise NotImplementedError

    def label(self, index: int) -> int:
        """The label of one example without decoding or rendering its image."""
        raise NotImplementedError

    def factors(self, index: int) -> dict:
        """Ground-truth generative factors of one example; {} for datasets that have none."""
        self._check_index(index)
        return {}

    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(len(self))], dtype=np.int64)

    def _check_index(self, index) -> int:
        if isinstance(index, bool):
            raise TypeError(f"{self.name}: index must be an int, got bool")
        try:
            index = operator.index(index)  # ints, numpy integers, 0-d integer tensors
        except TypeError:
            raise TypeError(f"{self.name}: index must be an int, got {type(index).__name__}") from None
        n = len(self)
        if not -n <= index < n:
            # IndexError (not ValueError) so that iterating with the old __getitem__ protocol stops cleanly.
            raise IndexError(f"{self.name}[{self.split}]: index {index} out of range for {n} examples")
        return int(index) % n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.raw(self._check_index(index))
        return uint8_to_tensor(image), int(label)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All examples as (images float32 [N, 3, S, S], labels int64 [N]); meant for small datasets."""
        from .loader import materialize

        return materialize(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, num_classes={self.num_classes})")


class GeneratedDataset(ImageDataset):
    """A task generated lazily: example i is drawn from `example_rng(family, seed, split, i)`.

    Subclasses implement `draw_factors(rng)` (all random choices that define the example, drawn first),
    `render(factors, rng)` (uint8 image; may keep drawing nuisance noise from the same rng) and
    `label_of(factors)`. Drawing factors first means `factors(i)` and `label(i)` never need to render.
    """

    family: str
    default_sizes = {"train": 10_000, "val": 1_000, "test": 2_000}

    def __init__(self, name: str, split: str = "train", image_size: int = 32, seed: int = 0,
                 num_examples: int | None = None):
        self.name = name
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.seed = check_seed(seed)
        if num_examples is None:
            num_examples = self.default_sizes[split]
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
            raise ValueError(f"{name}: num_examples must be a positive int, got {num_examples!r}")
        self._len = int(num_examples)

    def __len__(self) -> int:
        return self._len

    def _rng(self, index: int) -> np.random.Generator:
        return example_rng(self.family, self.seed, self.split, index)

    def draw_factors(self, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def render(self, factors: dict, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def label_of(self, factors: dict) -> int:
        raise NotImplementedError

    def factors(self, index: int) -> dict:
        return self.draw_factors(self._rng(self._check_index(index)))

    def label(self, index: int) -> int:
        return self.label_of(self.factors(index))

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        rng = self._rng(self._check_index(index))
        factors = self.draw_factors(rng)
        return self.render(factors, rng), self.label_of(factors)
