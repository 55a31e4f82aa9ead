"""User images in class folders: `folder:/path/to/root`, the layout of torchvision's ImageFolder.

Either root/<class>/<image> (split deterministically from the seed, stratified per class: round(10%) val,
round(20%) test, the rest train), or root/{train,val,test}/<class>/<image> when split folders exist (class names
are then the union over the split folders, so a label means the same class in every split). Images are decoded
with PIL, converted to RGB and resized to image_size x image_size bilinearly (aspect ratio not kept, as VTAB's
`resize` in big_vision does not keep it).

A file PIL cannot decode raises CorruptImageError naming the file, when that item is loaded (also inside a
DataLoader worker, whose re-raise keeps the message) or upfront with `verify()`. With skip_corrupt=True the split's
files are decoded once at construction and bad ones dropped with a warning naming each file, so indexes stay
consistent afterwards. The split is drawn before dropping, so a corrupt file never moves others between splits.
On the command line, where no keyword reaches the dataset, SPARSEVISION_SKIP_CORRUPT=1 asks for the same.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .base import ImageDataset, SPLITS, check_image_size, check_seed, check_split, stratified_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2
SKIP_CORRUPT_ENV = "SPARSEVISION_SKIP_CORRUPT"
_SKIP_HINT = f"set {SKIP_CORRUPT_ENV}=1 (or pass skip_corrupt=True) to skip unreadable images with a warning"


def _skip_corrupt_from_env() -> bool:
    return os.environ.get(SKIP_CORRUPT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class CorruptImageError(ValueError):
    """An image file that PIL cannot open or decode; the message names the file.

    Takes a single message argument so that torch's DataLoader can rebuild it in the main process.
    """


def _class_dirs(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return files


def _scan(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(root / name) if (root / name).is_dir() else []
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Decode one file to uint8 [S, S, 3], or raise CorruptImageError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL signals bad files with several types (UnidentifiedImageError is an OSError, truncated data an
        # OSError, some plugins ValueError/SyntaxError); one type with the path is what callers can act on.
        raise CorruptImageError(f"cannot read image file {str(path)!r}: {type(err).__name__}: {err} "
                                f"({_SKIP_HINT})") from err


class FolderDataset(ImageDataset):
    def __init__(self, root: str | os.PathLike, split: str = "train", image_size: int = 32, seed: int = 0,
                 skip_corrupt: bool | None = None):
        self.root = Path(root).expanduser()
        self.name = f"folder:{root}"
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.seed = check_seed(seed)
        if not self.root.is_dir():
            raise FileNotFoundError(f"folder dataset root {str(self.root)!r} is not a directory")

        split_dirs = [s for s in SPLITS if (self.root / s).is_dir()]
        if split_dirs:
            self.class_names = sorted({c for s in split_dirs for c in _class_dirs(self.root / s)})
            if split not in split_dirs:
                raise ValueError(f"{self.name}: split folder {split!r} not found (found {', '.join(split_dirs)})")
            self.files, self._labels = _scan(self.root / split, self.class_names)
        else:
            self.class_names = _class_dirs(self.root)
            files, labels = _scan(self.root, self.class_names)
            keep = stratified_split(labels, self.seed, VAL_FRACTION, TEST_FRACTION)[split]
            self.files, self._labels = [files[i] for i in keep], labels[keep]
        if not self.class_names:
            raise ValueError(f"{self.name}: no class sub-folders found under {str(self.root)!r}")
        if skip_corrupt is None:
            skip_corrupt = _skip_corrupt_from_env()
        if skip_corrupt:
            bad = set(self.verify(raise_on_error=False))
            for path in sorted(bad):
                warnings.warn(f"{self.name}: skipping unreadable image {str(path)!r}", stacklevel=2)
            good = [i for i, f in enumerate(self.files) if f not in bad]
            self.files, self._labels = [self.files[i] for i in good], self._labels[good]
        if not self.files:
            raise ValueError(f"{self.name}: split {split!r} holds no readable images "
                             f"(extensions {', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.files)

    def label(self, index: int) -> int:
        return int(self._labels[self._check_index(index)])

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        return load_image(self.files[index], self.image_size), int(self._labels[index])

    def verify(self, raise_on_error: bool = True) -> list[Path]:
        """Decode every file of this split once; return the unreadable ones, or raise naming them."""
        bad = []
        for path in self.files:
            try:
                load_image(path, 4)  # decoding is the check; a tiny resize keeps it cheap
            except CorruptImageError:
                bad.append(path)
        if bad and raise_on_error:
            shown = ", ".join(repr(str(p)) for p in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise CorruptImageError(f"{self.name}: {len(bad)} unreadable image file(s): {shown} ({_SKIP_HINT})")
        return bad
