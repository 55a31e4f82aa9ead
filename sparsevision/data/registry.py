"""`build_dataset(name, split, image_size, seed, **kwargs)` and `list_datasets()`: one entry point for every source.

Built-in generated tasks need no files and no network; `folder:`, `hf:` and `tv:` prefixes reach user data.
"""
from __future__ import annotations

import difflib
from typing import Callable

from .base import ImageDataset
from .counting import CountingDataset
from .digits import DigitsDataset
from .dsprites import DSpritesDataset
from .external import HFDataset, TorchvisionDataset
from .folder import FolderDataset
from .textures import TexturesDataset

# The training default: 10 classes, bundled with scikit-learn, learnable by a tiny ViT on CPU in about a minute.
DEFAULT_DATASET = "digits"

_BUILTIN: dict[str, Callable[..., ImageDataset]] = {
    "digits": DigitsDataset,
    "dsprites_location": lambda **kw: DSpritesDataset("location", **kw),
    "dsprites_orientation": lambda **kw: DSpritesDataset("orientation", **kw),
    "dsprites_shape": lambda **kw: DSpritesDataset("shape", **kw),
    "counting": CountingDataset,
    "textures": TexturesDataset,
}
_PREFIXES: dict[str, Callable[..., ImageDataset]] = {
    "folder:": lambda rest, **kw: FolderDataset(rest, **kw),
    "hf:": lambda rest, **kw: HFDataset(rest, **kw),
    "tv:": lambda rest, **kw: TorchvisionDataset(rest, **kw),
}


def list_datasets() -> list[str]:
    """Names of the built-in datasets (the `folder:`, `hf:` and `tv:` prefixes take a path or a name after them)."""
    return sorted(_BUILTIN)


def build_dataset(name: str, split: str = "train", image_size: int = 32, seed: int = 0, **kwargs) -> ImageDataset:
    """Build one split of a dataset; extra keyword arguments go to that dataset (e.g. num_examples=, skip_corrupt=)."""
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    common = dict(split=split, image_size=image_size, seed=seed, **kwargs)
    try:
        if name in _BUILTIN:
            return _BUILTIN[name](**common)
        for prefix, builder in _PREFIXES.items():
            if name.startswith(prefix):
                rest = name[len(prefix):]
                if not rest:
                    raise ValueError(f"dataset {name!r}: nothing after {prefix!r} (e.g. {prefix}<path or name>)")
                return builder(rest, **common)
    except TypeError as err:
        raise TypeError(f"bad arguments for dataset {name!r}: {err}") from err
    close = difflib.get_close_matches(name, list(_BUILTIN), n=5, cutoff=0.5)
    if ":" in name:  # a misspelt prefix: suggest the same path / name under the nearest real prefix
        head, rest = name.split(":", 1)
        close += [p + rest for p in difflib.get_close_matches(head + ":", list(_PREFIXES), n=1, cutoff=0.5)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}{hint} (built-in: {', '.join(list_datasets())}; "
                     f"or folder:<path>, hf:<name>, tv:<Name>)")
