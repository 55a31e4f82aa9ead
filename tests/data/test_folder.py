"""folder:<root> datasets: class folders, splits, resizing, and corrupt files reported by name."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sparsevision.data import CorruptImageError, build_dataset, make_loader

COLOURS = {"cat": (255, 0, 128), "dog": (0, 64, 255)}


def _write_tree(root, per_class=10, corrupt=True):
    for k, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            # Odd, non-square sizes: the loader must resize them all to image_size x image_size.
            Image.new("RGB", (7 + i, 5 + k), rgb).save(root / name / f"{name}_{i:02d}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return root


def _all_splits(root, **kw):
    return {s: build_dataset(f"folder:{root}", split=s, image_size=12, **kw) for s in ("train", "val", "test")}


def _find(splits, filename):
    for ds in splits.values():
        for i, f in enumerate(ds.files):
            if f.name == filename:
                return ds, i
    raise AssertionError(filename)


def test_classes_splits_and_pixels(tmp_path):
    root = _write_tree(tmp_path, corrupt=False)
    splits = _all_splits(root)
    files = [f for ds in splits.values() for f in ds.files]
    assert len(files) == len(set(files)) == 20  # disjoint, and the .txt is ignored
    assert [len(splits[s]) for s in ("train", "val", "test")] == [14, 2, 4]  # per class round(10%) val, round(20%) test
    ds = splits["train"]
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.shape == (3, 12, 12)
        assert ds.class_names[label] == ds.files[i].parent.name
        want = torch.tensor(COLOURS[ds.class_names[label]], dtype=torch.float32) / 127.5 - 1.0
        assert torch.allclose(img, want[:, None, None].expand_as(img))
    assert ds.factors(0) == {}
    again = _all_splits(root)["val"]
    other = _all_splits(root, seed=1)["val"]
    assert again.files == splits["val"].files and other.files != splits["val"].files


def test_corrupt_file_raises_naming_it_on_load_and_in_verify(tmp_path):
    splits = _all_splits(_write_tree(tmp_path))
    ds, i = _find(splits, "broken.png")
    with pytest.raises(CorruptImageError, match="broken.png"):
        ds[i]
    with pytest.raises(CorruptImageError, match="broken.png"):
        ds.verify()
    assert [p.name for p in ds.verify(raise_on_error=False)] == ["broken.png"]
    # A DataLoader worker re-raises in the main process with the file name still in the message.
    with pytest.raises(CorruptImageError, match="broken.png"):
        for _ in make_loader(ds, batch_size=len(ds), num_workers=1):
            pass


def test_skip_corrupt_warns_and_drops_only_that_file(tmp_path):
    root = _write_tree(tmp_path)
    plain = _all_splits(root)
    ds_bad, _ = _find(plain, "broken.png")
    with pytest.warns(UserWarning, match="broken.png"):
        skipped = build_dataset(f"folder:{root}", split=ds_bad.split, image_size=12, skip_corrupt=True)
    assert len(skipped) == len(ds_bad) - 1
    assert [f for f in ds_bad.files if f.name != "broken.png"] == skipped.files
    images, labels = skipped.to_tensors()
    assert images.shape == (len(skipped), 3, 12, 12) and labels.tolist() == skipped.labels().tolist()
    # The other splits are untouched by skipping and warn about nothing.
    for split, ds in plain.items():
        if split != ds_bad.split:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert build_dataset(f"folder:{root}", split=split, image_size=12, skip_corrupt=True).files == ds.files


def test_split_subfolders_are_used_when_present(tmp_path):
    for split, classes in {"train": ["a", "b", "c"], "val": ["a", "c"], "test": ["b"]}.items():
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / split / c / "x.png")
    val = build_dataset(f"folder:{tmp_path}", split="val", image_size=8)
    test = build_dataset(f"folder:{tmp_path}", split="test", image_size=8)
    assert val.class_names == test.class_names == ["a", "b", "c"]
    assert [val.class_names[label] for label in val.labels()] == ["a", "c"]
    assert test.labels().tolist() == [1]


def test_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        build_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="no class sub-folders"):
        build_dataset(f"folder:{tmp_path}")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no readable images"):
        build_dataset(f"folder:{tmp_path}")
