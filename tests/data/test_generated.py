"""Properties every generated task must have: determinism, value range, labels, balance, O(1) random access."""
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sparsevision.data import build_dataset

GENERATED = ["dsprites_location", "dsprites_orientation", "dsprites_shape", "counting", "textures"]


@pytest.mark.parametrize("name", GENERATED)
def test_same_seed_identical_other_seed_or_split_different(name):
    a = build_dataset(name, seed=3)
    b = build_dataset(name, seed=3)
    c = build_dataset(name, seed=4)
    for i in (0, 17, 9_999):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
        assert a.factors(i) == b.factors(i)
    assert not all(torch.equal(a[i][0], c[i][0]) for i in range(5))
    # val is an independent stream: none of its first images equals any of the first train images.
    train = {a.raw(i)[0].tobytes() for i in range(200)}
    val = build_dataset(name, split="val", seed=3)
    assert not any(val.raw(i)[0].tobytes() in train for i in range(200))


@pytest.mark.parametrize("name", GENERATED)
def test_random_access_does_not_depend_on_order(name):
    ds = build_dataset(name, num_examples=50)
    forward = [ds[i][0] for i in range(50)]
    backward = [ds[i][0] for i in reversed(range(50))][::-1]
    assert all(torch.equal(f, b) for f, b in zip(forward, backward))
    assert torch.equal(ds[-1][0], ds[49][0])
    with pytest.raises(IndexError):
        ds[50]


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("size", [16, 40])
def test_shape_dtype_and_value_range(name, size):
    ds = build_dataset(name, image_size=size, num_examples=20)
    for i in range(20):
        img, label = ds[i]
        assert img.shape == (3, size, size) and img.dtype == torch.float32
        assert img.min() >= -1.0 and img.max() <= 1.0
        # big_vision value_range(-1, 1) of uint8 pixels: (x + 1) * 127.5 is an integer in 0..255.
        level = (img.double() + 1.0) * 127.5
        assert torch.allclose(level, level.round(), atol=1e-4)
        assert isinstance(label, int) and 0 <= label < ds.num_classes
    assert len(ds.class_names) == ds.num_classes and all(isinstance(n, str) and n for n in ds.class_names)


@pytest.mark.parametrize("name", GENERATED)
def test_labels_cover_all_classes_roughly_uniformly(name):
    ds = build_dataset(name, num_examples=80 * 16)
    labels = ds.labels()
    counts = np.bincount(labels, minlength=ds.num_classes)
    assert len(counts) == ds.num_classes
    expected = len(labels) / ds.num_classes
    # Binomial spread: every class within 5 standard deviations of a uniform share.
    sd = np.sqrt(len(labels) * (1 / ds.num_classes) * (1 - 1 / ds.num_classes))
    assert np.all(np.abs(counts - expected) < 5 * sd), counts
    assert all(ds.label(i) == ds[i][1] for i in range(30))


def test_default_split_sizes_and_override():
    ds = {s: build_dataset("textures", split=s) for s in ("train", "val", "test")}
    assert [len(ds[s]) for s in ("train", "val", "test")] == [10_000, 1_000, 2_000]
    assert len(build_dataset("textures", num_examples=123)) == 123
    with pytest.raises(ValueError, match="num_examples"):
        build_dataset("textures", num_examples=0)


def _digest_in_fresh_process(hashseed: str) -> str:
    code = ("import hashlib; from sparsevision.data import build_dataset\n"
            "h = hashlib.sha256()\n"
            "for n in ['dsprites_location', 'counting', 'textures']:\n"
            "    ds = build_dataset(n, seed=11)\n"
            "    for i in (0, 1, 777): h.update(ds.raw(i)[0].tobytes())\n"
            "print(h.hexdigest())")
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_identical_across_processes():
    # Different str-hash salts must not matter: nothing may depend on hash() or on process state.
    h = hashlib.sha256()
    for n in ["dsprites_location", "counting", "textures"]:
        ds = build_dataset(n, seed=11)
        for i in (0, 1, 777):
            h.update(ds.raw(i)[0].tobytes())
    assert _digest_in_fresh_process("1") == _digest_in_fresh_process("2") == h.hexdigest()


@pytest.mark.parametrize("name", GENERATED)
def test_generation_is_fast(name):
    ds = build_dataset(name)
    start = time.perf_counter()
    for i in range(2000):
        ds[i]
    # Typically under a second on one core; the bound only catches per-pixel Python loops.
    assert time.perf_counter() - start < 10.0
