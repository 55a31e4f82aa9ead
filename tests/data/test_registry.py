"""build_dataset / list_datasets: names, argument errors, and the optional hf: / tv: sources (faked, no network)."""
import sys
import types

import numpy as np
import pytest
from PIL import Image

from sparsevision.data import ImageDataset, build_dataset, list_datasets

BUILTIN = {"digits", "dsprites_location", "dsprites_orientation", "dsprites_shape", "counting", "textures"}


def test_list_and_build_every_builtin():
    assert set(list_datasets()) == BUILTIN and list_datasets() == sorted(list_datasets())
    for name in list_datasets():
        ds = build_dataset(name, split="val", image_size=16)
        assert isinstance(ds, ImageDataset) and ds[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("typo, suggestion", [
    ("dsprite_location", "dsprites_location"), ("digit", "digits"), ("texture", "textures"),
    ("folders:/tmp/x", "folder:/tmp/x"),
])
def test_unknown_name_lists_close_matches(typo, suggestion):
    with pytest.raises(ValueError, match="unknown dataset") as err:
        build_dataset(typo)
    assert suggestion in str(err.value)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split 'training'"):
        build_dataset("digits", split="training")
    with pytest.raises(ValueError, match="image_size"):
        build_dataset("counting", image_size=0)
    with pytest.raises(ValueError, match="seed"):
        build_dataset("textures", seed=-1)
    with pytest.raises(TypeError, match="textures.*colour"):
        build_dataset("textures", colour="red")
    with pytest.raises(ValueError, match="nothing after"):
        build_dataset("folder:")


def test_missing_extras_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(ImportError, match=r"pip install sparsevision\[hf\]"):
        build_dataset("hf:cifar10")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match=r"pip install sparsevision\[vision\]"):
        build_dataset("tv:CIFAR10")


class _ClassLabel:
    def __init__(self, names):
        self.names = names


class _Image:
    pass


class _HFSplit:
    def __init__(self, n, offset):
        self.features = {"img": _Image(), "fine_label": _ClassLabel(["apple_pie", "bee"])}
        self.rows = [{"img": Image.new("RGB", (5, 3), (offset + i, 0, 0)), "fine_label": i % 2} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, str):  # column access, as a Hugging Face Dataset allows
            return [row[i] for row in self.rows]
        return self.rows[i]


def test_fake_hf_dataset_without_val_carves_it_from_train(monkeypatch):
    fake = types.ModuleType("datasets")
    fake.Image, fake.ClassLabel = _Image, _ClassLabel
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return {"train": _HFSplit(50, 0), "test": _HFSplit(7, 100)}

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ds = {s: build_dataset("hf:fake/toy", split=s, image_size=8, seed=3) for s in ("train", "val", "test")}
    assert calls[0] == ("fake/toy", {})
    assert [len(ds[s]) for s in ("train", "val", "test")] == [45, 5, 7]
    assert not set(ds["train"].indices) & set(ds["val"].indices)
    assert ds["train"].class_names == ["apple pie", "bee"]
    for split in ("train", "val"):
        assert ds[split].labels().tolist() == [ds[split][i][1] for i in range(len(ds[split]))]
    img, label = ds["test"][3]
    assert img.shape == (3, 8, 8) and label == 1
    assert abs(float(img[0, 0, 0]) - ((100 + 3) / 127.5 - 1)) < 1e-6


class _FakeCIFAR:
    def __init__(self, root, train=True, transform=None, download=False):
        self.n = 40 if train else 10
        self.classes = ["airplane", "automobile", "bird"]
        self.targets = [i % 3 for i in range(self.n)]
        self.download = download

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return Image.new("RGB", (4, 4), (i, i, i)), self.targets[i]


def test_fake_torchvision_dataset(monkeypatch, tmp_path):
    tv = types.ModuleType("torchvision")
    tvd = types.ModuleType("torchvision.datasets")
    tvd.CIFAR10 = _FakeCIFAR
    tv.datasets = tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)
    ds = {s: build_dataset("tv:CIFAR10", split=s, image_size=8, root=tmp_path) for s in ("train", "val", "test")}
    assert [len(ds[s]) for s in ("train", "val", "test")] == [36, 4, 10]
    assert not set(ds["train"].indices) & set(ds["val"].indices)
    assert ds["val"].class_names == ["airplane", "automobile", "bird"]
    assert ds["train"].source.download is False  # never downloads unless asked
    for i in range(len(ds["val"])):
        src = ds["val"].indices[i]
        assert ds["val"].label(i) == ds["val"][i][1] == src % 3
    with pytest.raises(ValueError, match="CIFAR10"):
        build_dataset("tv:CIFAR1O", root=tmp_path)
    assert np.array_equal(build_dataset("tv:CIFAR10", split="val", root=tmp_path).indices, ds["val"].indices)
