"""Evaluation plots are written as real, non-empty PNG files; bad input is refused before drawing."""
import numpy as np
import pytest
from PIL import Image

from sparsevision.evaluate.plots import bar_plot, reliability_diagram, risk_coverage_plot


def check_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    assert not path.with_name(path.name + ".tmp").exists()


def test_reliability_and_risk_coverage_plots(tmp_path):
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 4)) * 2, rng.integers(0, 4, size=200)
    check_png(reliability_diagram(logits, labels, tmp_path / "sub" / "rel.png", num_bins=10, title="tiny"))
    out = risk_coverage_plot({"a": (logits, labels), "b": (logits * 0.5, labels)}, tmp_path / "rc.png", title="rc")
    check_png(out)
    with pytest.raises(ValueError, match="empty"):
        risk_coverage_plot({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="pair"):
        risk_coverage_plot({"a": logits}, tmp_path / "x.png")


def test_bar_plot(tmp_path):
    values = {f"task_{i}": float(v) for i, v in enumerate(np.linspace(0.2, 0.9, 7))}
    check_png(bar_plot(values, tmp_path / "bars.png", title="VTAB", ylabel="accuracy", sort=True))
    check_png(bar_plot({"only": 1.0}, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="bad entries: \\['b'\\]"):
        bar_plot({"a": 0.5, "b": float("nan")}, tmp_path / "nan.png")
    with pytest.raises(ValueError, match="empty"):
        bar_plot({}, tmp_path / "none.png")
