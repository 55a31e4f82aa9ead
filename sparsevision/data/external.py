"""Datasets from optional libraries: `hf:<name>` (Hugging Face `datasets`) and `tv:<Name>` (torchvision).

These are how real users reach the actual VTAB sources (e.g. `tv:DTD`, `tv:SVHN`, `hf:clevr`...). They may
download: Hugging Face does so by default through its own cache; torchvision only with download=True (off by
default, so nothing here reaches the network unasked). Missing libraries raise ImportError naming the extra.

Splits: for `hf:` the source's own train / validation / test are used when it has them; a missing "val" is
carved from train as a deterministic 10% hold-out from the seed (train then keeps the other 90%), as big_vision
configs do with `train[:90%]` / `train[90%:]`. A missing "test" is an error, not a silent reuse of another split.
For `tv:` val is always carved from the source's train split that way, since torchvision classes do not say which
split names they accept (SVHN and CIFAR have no val at all).
"""
from __future__ import annotations

import inspect
import os

import numpy as np

from .base import ImageDataset, check_image_size, check_seed, check_split

HOLDOUT_FRACTION = 0.1
_HF_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"this dataset needs the `{module}` package: pip install sparsevision[{extra}]") from err


def _holdout(n: int, seed: int, split: str) -> np.ndarray:
    """Indices of `split` ("train" or "val") when val is carved from a train set of n examples."""
    perm = np.random.default_rng([0x5EED, seed, n]).permutation(n)
    n_val = max(1, int(round(n * HOLDOUT_FRACTION)))
    return np.sort(perm[:n_val] if split == "val" else perm[n_val:])


def _to_uint8(image, image_size: int) -> np.ndarray:
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


class _IndexedSource(ImageDataset):
    """Shared by both wrappers: a source indexable by int, an index subset, and a way to read one example."""

    def __len__(self) -> int:
        return len(self.indices)

    def _example(self, source_index: int) -> tuple[object, int]:
        raise NotImplementedError

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        image, label = self._example(int(self.indices[self._check_index(index)]))
        return _to_uint8(image, self.image_size), int(label)

    def label(self, index: int) -> int:
        return int(self._example(int(self.indices[self._check_index(index)]))[1])


class HFDataset(_IndexedSource):
    def __init__(self, name: str, split: str = "train", image_size: int = 32, seed: int = 0,
                 image_key: str | None = None, label_key: str | None = None, **load_kwargs):
        datasets = _require("datasets", "hf")
        self.name, self.split = f"hf:{name}", check_split(split)
        self.image_size, self.seed = check_image_size(image_size), check_seed(seed)
        splits = datasets.load_dataset(name, **load_kwargs)
        available = list(splits.keys())
        found = next((s for s in _HF_SPLIT_NAMES[split] if s in splits), None)
        if found is None and split in ("train", "val") and "train" in splits:
            self.source = splits["train"]
            self.indices = _holdout(len(self.source), self.seed, split)
        elif found is None:
            raise ValueError(f"{self.name}: no {split!r} split (available: {', '.join(available)})")
        else:
            self.source = splits[found]
            self.indices = np.arange(len(self.source))
            if split == "train" and not any(s in splits for s in _HF_SPLIT_NAMES["val"]):
                self.indices = _holdout(len(self.source), self.seed, "train")  # val is carved from it
        features = self.source.features
        self.image_key = image_key or next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
        self.label_key = label_key or next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        if self.image_key is None or self.label_key is None:
            raise ValueError(f"{self.name}: cannot tell the image / label columns among {list(features)}; "
                             f"pass image_key= and label_key=")
        label_feature = features[self.label_key]
        names = getattr(label_feature, "names", None)
        self.class_names = [n.replace("_", " ") for n in names] if names else \
            [str(i) for i in range(int(getattr(label_feature, "num_classes", 0)))]
        if not self.class_names:
            raise ValueError(f"{self.name}: label column {self.label_key!r} has no class names; is it a ClassLabel?")

    def _example(self, source_index: int):
        row = self.source[source_index]
        return row[self.image_key], row[self.label_key]

    def labels(self) -> np.ndarray:
        try:  # a Hugging Face Dataset returns a whole column without decoding any image
            column = self.source[self.label_key]
        except (KeyError, TypeError, IndexError):
            return super().labels()
        return np.asarray(column, dtype=np.int64)[self.indices]


class TorchvisionDataset(_IndexedSource):
    def __init__(self, name: str, split: str = "train", image_size: int = 32, seed: int = 0,
                 root: str | os.PathLike | None = None, download: bool = False, **dataset_kwargs):
        tv_datasets = _require("torchvision.datasets", "vision")
        self.name, self.split = f"tv:{name}", check_split(split)
        self.image_size, self.seed = check_image_size(image_size), check_seed(seed)
        cls = getattr(tv_datasets, name, None)
        if not inspect.isclass(cls):
            import difflib

            close = difflib.get_close_matches(name, [n for n in dir(tv_datasets) if n[:1].isupper()], n=5)
            raise ValueError(f"unknown torchvision dataset {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
        root = os.path.expanduser(root or os.path.join("~", ".cache", "sparsevision", "torchvision"))
        params = inspect.signature(cls).parameters
        kwargs = dict(root=root, download=download, **dataset_kwargs)
        # torchvision cannot tell which split names a class accepts, and SVHN / CIFAR have no val at all, so val
        # is always carved from the source's train split (and train keeps the rest), never mixed with a native val.
        if "split" in params:
            self.source = cls(split="test" if split == "test" else "train", **kwargs)
        elif "train" in params:
            self.source = cls(train=split != "test", **kwargs)
        else:
            raise ValueError(f"{self.name}: neither a `split` nor a `train` argument; build it yourself and wrap it")
        carve = split != "test"
        self.indices = _holdout(len(self.source), self.seed, split) if carve else np.arange(len(self.source))
        classes = getattr(self.source, "classes", None)
        if classes is None:
            targets = np.asarray(getattr(self.source, "targets", getattr(self.source, "labels", [])))
            classes = [str(i) for i in range(int(targets.max()) + 1)] if targets.size else []
        if not classes:
            raise ValueError(f"{self.name}: cannot find the class names (no .classes / .targets / .labels)")
        self.class_names = [str(c) for c in classes]

    def _example(self, source_index: int):
        return self.source[source_index]

    def label(self, index: int) -> int:
        targets = getattr(self.source, "targets", None)
        if targets is None:
            targets = getattr(self.source, "labels", None)
        if targets is not None:  # avoid decoding the image just for its label
            return int(targets[int(self.indices[self._check_index(index)])])
        return super().label(index)
