"""CLEVR-count-like task: the label is the number of objects one can count in the image independently."""
import numpy as np
import pytest
from scipy import ndimage

from sparsevision.data import build_dataset


def _count_blobs(img: np.ndarray) -> int:
    # The floor is grey (equal channels) and every object colour is saturated, so saturation separates them;
    # 8-connectivity keeps thin triangle tips attached to their body.
    rgb = img.astype(np.float64) / 255.0
    saturation = rgb.max(-1) - rgb.min(-1)
    _, n = ndimage.label(saturation > 0.25, structure=np.ones((3, 3)))
    return n


@pytest.mark.parametrize("size", [32, 64])
def test_label_equals_independently_counted_objects(size):
    ds = build_dataset("counting", image_size=size, num_examples=150, seed=5)
    for i in range(150):
        img, label = ds.raw(i)
        assert _count_blobs(img) == label + 3 == ds.factors(i)["count"] == len(ds.factors(i)["objects"])


def test_vtab_count_all_classes():
    ds = build_dataset("counting")
    # VTAB clevr count_all: counts 3..10 as 8 classes, label = count - 3.
    assert ds.num_classes == 8
    assert ds.class_names[0] == "3 objects" and ds.class_names[-1] == "10 objects"
    counts = {ds.factors(i)["count"] for i in range(300)}
    assert counts == set(range(3, 11))


def test_custom_count_range():
    ds = build_dataset("counting", min_count=1, max_count=6, num_examples=200, image_size=48)
    assert ds.num_classes == 6 and ds.class_names[0] == "1 object"
    for i in range(200):
        img, label = ds.raw(i)
        assert _count_blobs(img) == label + 1
    for bad in [dict(min_count=0), dict(min_count=5, max_count=4), dict(max_count=11)]:
        with pytest.raises(ValueError, match="min_count"):
            build_dataset("counting", **bad)


def test_object_factors_describe_the_pixels():
    ds = build_dataset("counting", image_size=64, num_examples=40)
    names = {"red": 0, "green": 1, "blue": 2}
    for i in range(40):
        img = ds.raw(i)[0]
        for obj in ds.factors(i)["objects"]:
            assert 0.0 < obj["x"] < 1.0 and 0.0 < obj["y"] < 1.0
            assert obj["shape"] in ("circle", "square", "triangle") and obj["size"] in ("small", "large")
            r, c = int(obj["y"] * 64), int(obj["x"] * 64)
            pixel = img[r, c].astype(int)
            assert pixel.max() - pixel.min() > 60  # the object's centre is coloured, not floor
            if obj["color"] in names:
                assert np.argmax(pixel) == names[obj["color"]]
