"""A corrupt image in a `folder:` dataset through the command line: named with the way to skip it, and skipped
with a warning naming it when SPARSEVISION_SKIP_CORRUPT=1 asks."""
import numpy as np
import pytest
from PIL import Image

from sparsevision.cli import main


def _image_folder(root):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("val", 4), ("test", 4)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"not a png")
    return bad


def _train(root, out):
    return main(["train", "--preset", "test", "--steps", "2", "--out", str(out), "--no-progress",
                 "--set", f"data.dataset=folder:{root}", "data.batch_size=8", "optim.warmup_steps=0"])


def test_corrupt_image_named_then_skipped_on_request(tmp_path, capsys, monkeypatch):
    bad = _image_folder(tmp_path / "imgs")
    monkeypatch.delenv("SPARSEVISION_SKIP_CORRUPT", raising=False)
    assert _train(tmp_path / "imgs", tmp_path / "run1") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot read image file '{bad}'" in err and "SPARSEVISION_SKIP_CORRUPT=1" in err

    monkeypatch.setenv("SPARSEVISION_SKIP_CORRUPT", "1")
    with pytest.warns(UserWarning, match=f"skipping unreadable image '{bad}'"):
        assert _train(tmp_path / "imgs", tmp_path / "run2") == 0
