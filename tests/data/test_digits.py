"""scikit-learn digits: stratified disjoint splits of all 1797 images, faithful bilinear upsampling."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from sparsevision.data import DEFAULT_DATASET, build_dataset, list_datasets

DIGITS = load_digits()


def _splits(seed=0, size=32):
    return {s: build_dataset("digits", split=s, seed=seed, image_size=size) for s in ("train", "val", "test")}


def test_splits_partition_all_1797_images_and_are_stratified():
    ds = _splits()
    idx = {s: set(d.indices.tolist()) for s, d in ds.items()}
    assert sum(len(d) for d in ds.values()) == 1797 == len(DIGITS.target)
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"]) and not (idx["val"] & idx["test"])
    assert idx["train"] | idx["val"] | idx["test"] == set(range(1797))
    per_class = np.bincount(DIGITS.target)
    for split, share in (("val", 0.1), ("test", 0.2)):
        got = np.bincount(ds[split].labels(), minlength=10)
        assert np.all(np.abs(got - share * per_class) <= 1.0), (split, got)
    assert ds["train"].num_classes == 10 and ds["train"].class_names == [str(d) for d in range(10)]


def test_split_depends_on_seed_only():
    a, b, c = _splits(seed=1)["test"], _splits(seed=1)["test"], _splits(seed=2)["test"]
    assert np.array_equal(a.indices, b.indices) and not np.array_equal(a.indices, c.indices)


def test_labels_and_native_resolution_pixels_match_sklearn():
    ds = build_dataset("digits", split="val", image_size=8)
    for i in range(0, len(ds), 7):
        img, label = ds[i]
        src = ds.indices[i]
        assert label == DIGITS.target[src]
        want = torch.from_numpy(DIGITS.images[src] / 16.0 * 2.0 - 1.0).float()
        for ch in range(3):
            assert torch.allclose(img[ch], want, atol=1.0 / 255 + 1e-6)


def _bilinear_reference(src: np.ndarray, out: int) -> np.ndarray:
    # Half-pixel centres with edge clamping (align_corners=False), as a float64 double loop.
    n = src.shape[0]
    scale = n / out
    res = np.zeros((out, out))
    for r in range(out):
        for c in range(out):
            y = max((r + 0.5) * scale - 0.5, 0.0)
            x = max((c + 0.5) * scale - 0.5, 0.0)
            y0, x0 = min(int(np.floor(y)), n - 1), min(int(np.floor(x)), n - 1)
            y1, x1 = min(y0 + 1, n - 1), min(x0 + 1, n - 1)
            wy, wx = y - y0, x - x0
            res[r, c] = ((1 - wy) * (1 - wx) * src[y0, x0] + (1 - wy) * wx * src[y0, x1]
                         + wy * (1 - wx) * src[y1, x0] + wy * wx * src[y1, x1])
    return res


@pytest.mark.parametrize("size", [20, 32])
def test_upsampling_is_bilinear(size):
    ds = build_dataset("digits", split="test", image_size=size)
    for i in (0, 101):
        ref = _bilinear_reference(DIGITS.images[ds.indices[i]] / 16.0, size)
        img = ds[i][0].double()
        assert img.shape == (3, size, size)
        assert torch.allclose((img[0] + 1) / 2, torch.from_numpy(ref), atol=0.5 / 255 + 1e-6)
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])


def test_digits_is_the_default():
    assert DEFAULT_DATASET == "digits" and DEFAULT_DATASET in list_datasets()
    assert build_dataset("digits").factors(0) == {}
