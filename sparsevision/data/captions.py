"""Image-caption pairs for contrastive (CLIP / SigLIP / LIMoE) training, offline.

- `CaptionDataset(base_name, ...)`: any built-in dataset with captions written from its ground-truth generative
  factors ("a large red square in the top left", "an image of 5 objects", "a striped pattern in red and grey").
  Every caption of a task contains its class name, so prompts made from the class names ("an image of a square.")
  are in-distribution for zero-shot classification; the other attributes (colour, size, position, ...) and the
  wording vary per example, drawn from a generator seeded by (base name, seed, split, index).
- `ImageTextFolder(root)`: a user's folder of image files, each with a same-name `.txt` caption.
- `ImageTextTable(path)`: a CSV / TSV of `path,caption` rows (an optional header row is skipped).
- `WebDatasetPairs(urls)`: webdataset tar shards (`<key>.jpg|png` + `<key>.txt`); needs the `webdataset` package.

Items are `(image float32 [3, S, S] in [-1, 1], caption str, label int)`; user pairs have label -1.
`build_caption_dataset(name, ...)` picks one from a name: a built-in dataset, `pairs:<folder or csv/tsv>` or
`wds:<shard url or brace pattern>`. `TokenizedCaptions` turns the captions into padded token ids for training.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from .base import check_image_size, check_seed, example_rng, stratified_split, uint8_to_tensor
from .folder import IMAGE_EXTENSIONS, load_image

NO_LABEL = -1


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _size_word(scale: float) -> str:
    # dSprites scales are linspace(0.5, 1, 6): two per word.
    return "small" if scale < 0.65 else "medium" if scale < 0.85 else "large"


def _position_phrase(x: float, y: float) -> str:
    """Thirds of the image (x right, y down from the top), in words."""
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col}"
    if row or col:
        return f"{'at' if row else 'on'} the {row or col}"
    return "in the center"


def _dsprites_caption(f: dict, class_name: str, task: str, rng: np.random.Generator) -> str:
    shape, color, size = f["shape"], f["color"], _size_word(f["scale"])
    where = _position_phrase(f["x"], f["y"])
    noun = _pick(rng, [f"{size} {color} {shape}", f"{color} {shape}", f"{size} {shape}", shape])
    if task == "location":  # the label is the horizontal bin: name it exactly, as the class names do
        return _pick(rng, [f"{_article(noun)} at {class_name}", f"an image of {_article(noun)} at {class_name}"])
    if task == "orientation":
        return _pick(rng, [f"{_article(noun)} {class_name}", f"an image of {_article(noun)} {class_name}"])
    return _pick(rng, [f"{_article(noun)} {where}", f"an image of {_article(noun)}", f"a picture of {_article(noun)}",
                       f"{_article(noun)}", f"{_article(shape)} in {color}, {where}"])


def _counting_caption(f: dict, class_name: str, rng: np.random.Generator) -> str:
    first = f["objects"][int(rng.integers(len(f["objects"])))]
    example = f"{first['size']} {first['color']} {first['shape']}"
    return _pick(rng, [f"an image of {class_name}", f"{class_name} on a grey floor",
                       f"a scene with {class_name}, one of them {_article(example)}", f"a picture of {class_name}"])


def _textures_caption(f: dict, class_name: str, rng: np.random.Generator) -> str:
    fg, bg = f["color"], f["background_color"]
    return _pick(rng, [f"a {class_name} pattern in {fg} and {bg}", f"an image of a {class_name} texture",
                       f"a {fg} {class_name} texture on {bg}", f"a {class_name} texture",
                       f"a picture of a {class_name} pattern"])


def _generic_caption(class_name: str, rng: np.random.Generator) -> str:
    return _pick(rng, [f"an image of {class_name}", f"a picture of {class_name}", f"a photo of {class_name}"])


def caption_from_factors(base_name: str, factors: dict, class_name: str, rng: np.random.Generator) -> str:
    """One caption for an example of `base_name`; contains `class_name` (see the module docstring)."""
    if base_name.startswith("dsprites_") and factors:
        return _dsprites_caption(factors, class_name, base_name[len("dsprites_"):], rng)
    if base_name == "counting" and factors:
        return _counting_caption(factors, class_name, rng)
    if base_name == "textures" and factors:
        return _textures_caption(factors, class_name, rng)
    if base_name == "digits":
        return _pick(rng, [f"a handwritten digit {class_name}", f"an image of the digit {class_name}",
                           f"the digit {class_name}"])
    return _generic_caption(class_name, rng)


class CaptionDataset(Dataset):
    """(image, caption, label) over a built-in dataset, captioned from its generative factors."""

    def __init__(self, base_name: str, split: str = "train", image_size: int = 32, seed: int = 0, **kwargs):
        from .registry import build_dataset

        self.base = build_dataset(base_name, split=split, image_size=image_size, seed=seed, **kwargs)
        self.base_name, self.split, self.seed = base_name, split, seed
        self.image_size = image_size
        self.name = f"captions:{base_name}"
        self.class_names = self.base.class_names

    def __len__(self) -> int:
        return len(self.base)

    def caption(self, index: int) -> str:
        index = self.base._check_index(index)
        label = self.base.label(index)
        rng = example_rng(self.name, self.seed, self.split, index)
        return caption_from_factors(self.base_name, self.base.factors(index), self.class_names[label], rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        image, label = self.base[index]
        return image, self.caption(index), int(label)


def _split_indices(n: int, split: str | None, seed: int) -> np.ndarray:
    """All of a user's pairs (split=None) or a deterministic 70/10/20 train/val/test cut of them."""
    if split is None:
        return np.arange(n)
    return stratified_split(np.zeros(n, dtype=np.int64), seed, 0.1, 0.2)[split]


class _PairsDataset(Dataset):
    files: list[Path]
    captions: list[str]

    def _select(self, split: str | None, seed: int) -> None:
        if split is not None and split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; expected train, val, test or None (all pairs)")
        keep = _split_indices(len(self.files), split, check_seed(seed))
        self.files = [self.files[i] for i in keep]
        self.captions = [self.captions[i] for i in keep]
        if not self.files:
            raise ValueError(f"{self.name}: split {split!r} holds no image-caption pairs")
        self.class_names: list[str] = []

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} pairs")
        return uint8_to_tensor(load_image(self.files[index], self.image_size)), self.captions[index], NO_LABEL


class ImageTextFolder(_PairsDataset):
    """Every image file under `root` (recursively) that has a same-name `.txt` file next to it."""

    def __init__(self, root: str | os.PathLike, split: str | None = None, image_size: int = 32, seed: int = 0):
        self.root = Path(root).expanduser()
        self.name, self.image_size = f"pairs:{root}", check_image_size(image_size)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image-caption folder {str(self.root)!r} is not a directory")
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                        and not p.name.startswith("."))
        self.files = [p for p in images if p.with_suffix(".txt").is_file()]
        if not self.files:
            raise ValueError(f"{self.name}: no image file with a same-name .txt caption under {str(self.root)!r} "
                             f"({len(images)} image(s) without captions)")
        self.captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in self.files]
        self._select(split, seed)


class ImageTextTable(_PairsDataset):
    """Rows `path,caption` of a CSV (or TSV, by extension `.tsv`); relative paths are relative to the table."""

    def __init__(self, path: str | os.PathLike, split: str | None = None, image_size: int = 32, seed: int = 0,
                 delimiter: str | None = None):
        self.path = Path(path).expanduser()
        self.name, self.image_size = f"pairs:{path}", check_image_size(image_size)
        if not self.path.is_file():
            raise FileNotFoundError(f"image-caption table {str(self.path)!r} does not exist")
        delimiter = delimiter or ("\t" if self.path.suffix.lower() == ".tsv" else ",")
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle, delimiter=delimiter) if row]
        if rows and [c.strip().lower() for c in rows[0][:2]] in (["path", "caption"], ["image", "caption"],
                                                                  ["filepath", "caption"], ["file", "caption"]):
            rows = rows[1:]
        self.files, self.captions = [], []
        for line, row in enumerate(rows, start=1):
            if len(row) < 2:
                raise ValueError(f"{self.name}: row {line} has {len(row)} column(s); expected path{delimiter}caption")
            file = Path(row[0].strip()).expanduser()
            self.files.append(file if file.is_absolute() else self.path.parent / file)
            self.captions.append(row[1].strip())
        if not self.files:
            raise ValueError(f"{self.name}: the table holds no rows")
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.name}: {len(missing)} image file(s) not found, e.g. {missing[0]!r}")
        self._select(split, seed)


class WebDatasetPairs(IterableDataset):
    """Stream (image, caption, -1) from webdataset tar shards holding `<key>.{jpg,jpeg,png,webp}` + `<key>.txt`."""

    def __init__(self, urls: str | list[str], image_size: int = 32):
        try:
            import webdataset  # noqa: F401
        except ImportError as err:
            raise ImportError("reading webdataset tar shards needs the `webdataset` package (pip install "
                              "webdataset); or use a folder of image + .txt files or a CSV/TSV (pairs:<path>)") from err
        self.urls, self.image_size = urls, check_image_size(image_size)
        self.class_names: list[str] = []

    def __iter__(self):
        import webdataset as wds
        from PIL import Image

        for image, caption in wds.WebDataset(self.urls, shardshuffle=False).decode("pil").to_tuple(
                "jpg;jpeg;png;webp", "txt"):
            image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
            yield uint8_to_tensor(np.asarray(image, dtype=np.uint8)), str(caption).strip(), NO_LABEL


def build_caption_dataset(name: str, split: str = "train", image_size: int = 32, seed: int = 0, **kwargs):
    """`pairs:<folder | .csv | .tsv>` (user pairs, split 70/10/20 by seed), `wds:<urls>` (streamed, every split
    the same shards) or a built-in dataset name (captioned from its factors)."""
    if name.startswith("pairs:"):
        path = Path(name[len("pairs:"):]).expanduser()
        if path.is_dir():
            return ImageTextFolder(path, split, image_size, seed)
        return ImageTextTable(path, split, image_size, seed, **kwargs)
    if name.startswith("wds:"):
        return WebDatasetPairs(name[len("wds:"):], image_size)
    return CaptionDataset(name, split, image_size, seed, **kwargs)


class TokenizedCaptions(Dataset):
    """(image, token ids LongTensor [max_len], label) from a map-style caption dataset and a tokenizer."""

    def __init__(self, captions: Dataset, tokenizer):
        self.captions, self.tokenizer = captions, tokenizer
        self.class_names = getattr(captions, "class_names", [])
        self.name = getattr(captions, "name", type(captions).__name__)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, caption, label = self.captions[index]
        return image, self.tokenizer(caption)[0], label
