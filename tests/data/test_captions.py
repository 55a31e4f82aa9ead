"""Captioned generated data (captions agree with the ground-truth factors) and user image-caption pair loaders."""
import importlib.util
import re

import numpy as np
import pytest
import torch
from PIL import Image

from sparsevision.data.captions import (CaptionDataset, ImageTextFolder, ImageTextTable, TokenizedCaptions,
                                        WebDatasetPairs, build_caption_dataset)
from sparsevision.data.registry import build_dataset
from sparsevision.text import ByteTokenizer

COLOURS = ["white", "red", "green", "blue", "yellow", "cyan", "magenta", "orange", "purple", "brown"]


def test_dsprites_captions_agree_with_factors():
    ds = CaptionDataset("dsprites_shape", "train", image_size=16, seed=3, num_examples=60)
    base = build_dataset("dsprites_shape", "train", image_size=16, seed=3, num_examples=60)
    templates = set()
    for i in range(60):
        f, caption = base.factors(i), ds.caption(i)
        words = re.findall(r"[a-z]+", caption)
        assert f["shape"] in words and ds.class_names[base.label(i)] == f["shape"]
        for colour in COLOURS:  # a colour is named only if it is the sprite's
            assert (colour in words) <= (colour == f["color"]), (caption, f)
        size = "small" if f["scale"] <= 0.6 else "medium" if f["scale"] <= 0.8 else "large"
        for word in ("small", "medium", "large"):
            assert (word in words) <= (word == size), (caption, f)
        # Position phrase, checked against thirds computed here from x (left to right) and y (top to bottom).
        horizontal = "left" if f["x"] < 1 / 3 else "right" if f["x"] > 2 / 3 else None
        vertical = "top" if f["y"] < 1 / 3 else "bottom" if f["y"] > 2 / 3 else None
        if any(w in words for w in ("left", "right", "top", "bottom", "center")):
            for word in ("left", "right"):
                assert (word in words) == (word == horizontal), (caption, f)
            for word in ("top", "bottom"):
                assert (word in words) == (word == vertical), (caption, f)
            assert ("center" in words) == (horizontal is None and vertical is None)
        templates.add(re.sub(r"\b(%s)\b" % "|".join(COLOURS + ["small", "medium", "large", "square", "ellipse",
                                                                 "heart"]), "_", caption))
    assert len(templates) >= 4  # several wordings, not one template


def test_items_match_base_and_are_deterministic():
    ds = CaptionDataset("textures", "val", image_size=16, seed=0, num_examples=8)
    base = build_dataset("textures", "val", image_size=16, seed=0, num_examples=8)
    again = CaptionDataset("textures", "val", image_size=16, seed=0, num_examples=8)
    other_seed = CaptionDataset("textures", "val", image_size=16, seed=1, num_examples=8)
    for i in range(8):
        image, caption, label = ds[i]
        base_image, base_label = base[i]
        assert torch.equal(image, base_image) and label == base_label
        f = base.factors(i)
        assert f["texture"] in caption and caption == again.caption(i)
        if f["color"] + " " in caption or " " + f["color"] in caption:
            assert f["background_color"] in caption  # the templates name both colours or neither
    assert [ds.caption(i) for i in range(8)] != [other_seed.caption(i) for i in range(8)]


def test_counting_and_digits_captions_name_the_class():
    ds = CaptionDataset("counting", "train", image_size=32, num_examples=10)
    for i in range(10):
        count = ds.base.factors(i)["count"]
        assert re.search(rf"\b{count} objects\b", ds.caption(i))
    digits = CaptionDataset("digits", "test", image_size=8)
    for i in range(5):
        assert digits.caption(i).split()[-1] == str(digits.base.label(i))


def _write_image(path, value):
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(path)


def test_image_text_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for k, name in enumerate(["a.png", "b.jpg", "sub/c.png", "nocaption.png"]):
        _write_image(tmp_path / name, 40 * k)
        if name != "nocaption.png":
            (tmp_path / name).with_suffix(".txt").write_text(f"caption {k}\n")
    ds = ImageTextFolder(tmp_path, image_size=4)
    assert len(ds) == 3
    items = {caption: image for image, caption, label in ds}
    assert set(items) == {"caption 0", "caption 1", "caption 2"}
    assert items["caption 0"].shape == (3, 4, 4)
    torch.testing.assert_close(items["caption 2"], torch.full((3, 4, 4), 80 / 127.5 - 1))
    assert all(label == -1 for _, _, label in ds)
    # Splits are disjoint and cover every pair.
    parts = [ImageTextFolder(tmp_path, split=s, image_size=4).captions for s in ("train", "val", "test")
             if _nonempty(tmp_path, s)]
    assert sorted(sum(parts, [])) == sorted(items)


def _nonempty(root, split):
    try:
        ImageTextFolder(root, split=split, image_size=4)
        return True
    except ValueError:
        return False


def test_image_text_table_csv_and_tsv(tmp_path):
    (tmp_path / "img").mkdir()
    _write_image(tmp_path / "img" / "x.png", 0)
    _write_image(tmp_path / "img" / "y.png", 255)
    (tmp_path / "pairs.csv").write_text('path,caption\nimg/x.png,"a black, empty square"\nimg/y.png,white\n')
    ds = build_caption_dataset(f"pairs:{tmp_path / 'pairs.csv'}", split=None, image_size=4)
    assert isinstance(ds, ImageTextTable) and ds.captions == ["a black, empty square", "white"]
    assert float(ds[1][0].min()) == 1.0
    (tmp_path / "pairs.tsv").write_text(f"{tmp_path / 'img' / 'x.png'}\ttab separated\n")
    assert ImageTextTable(tmp_path / "pairs.tsv", image_size=4).captions == ["tab separated"]
    (tmp_path / "bad.csv").write_text("img/x.png\n")
    with pytest.raises(ValueError, match="row 1"):
        ImageTextTable(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("img/zzz.png,caption\n")
    with pytest.raises(FileNotFoundError, match="zzz.png"):
        ImageTextTable(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="no image file"):
        ImageTextFolder(tmp_path / "img")


@pytest.mark.skipif(importlib.util.find_spec("webdataset") is not None, reason="webdataset is installed")
def test_webdataset_without_package_is_a_clear_import_error():
    with pytest.raises(ImportError, match="pip install webdataset"):
        WebDatasetPairs("shard-000.tar")
    with pytest.raises(ImportError, match="webdataset"):
        build_caption_dataset("wds:shard-000.tar")


def test_tokenized_captions():
    ds = CaptionDataset("dsprites_shape", "test", image_size=16, num_examples=4)
    tok = ByteTokenizer(max_len=48)
    image, tokens, label = TokenizedCaptions(ds, tok)[2]
    assert torch.equal(tokens, tok(ds.caption(2))[0]) and tokens.shape == (48,)
    assert tok.decode(tokens) == ds.caption(2) and label == ds.base.label(2)
