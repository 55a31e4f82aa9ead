"""DTD-like textures: the class is the pattern family; colours, period and orientation agree with the pixels."""
import numpy as np

from sparsevision.data import build_dataset
from sparsevision.data.textures import TEXTURE_COLORS


def _examples(ds, texture, n):
    out = []
    for i in range(len(ds)):
        if ds.factors(i)["texture"] == texture:
            out.append(i)
            if len(out) == n:
                break
    return out


def test_classes_are_the_texture_families():
    ds = build_dataset("textures", num_examples=200)
    assert 8 <= ds.num_classes <= 10
    for i in range(200):
        assert ds.class_names[ds.label(i)] == ds.factors(i)["texture"]
        assert ds.factors(i)["color"] != ds.factors(i)["background_color"]


def test_stripes_spectrum_peaks_at_the_period_and_orientation():
    size = 64
    ds = build_dataset("textures", image_size=size, num_examples=600)
    for i in _examples(ds, "striped", 15):
        f = ds.factors(i)
        grey = ds.raw(i)[0].astype(np.float64).mean(-1)
        spec = np.abs(np.fft.fft2(grey - grey.mean()))
        ky, kx = np.unravel_index(np.argmax(spec), spec.shape)
        # Signed integer frequencies in cycles per image; rows grow downward, so y-up maps to -row.
        fx, fy = (kx + size // 2) % size - size // 2, -((ky + size // 2) % size - size // 2)
        a = np.radians(f["orientation_deg"])
        want = np.array([np.cos(a), np.sin(a)]) / f["period"]
        got = np.array([fx, fy], dtype=np.float64)
        assert min(np.linalg.norm(got - want), np.linalg.norm(got + want)) < 1.5, (f, got, want)


def test_two_colour_patterns_use_exactly_their_named_colours():
    ds = build_dataset("textures", image_size=32, num_examples=400)
    for texture in ("striped", "chequered", "grid"):
        for i in _examples(ds, texture, 5):
            f = ds.factors(i)
            img = ds.raw(i)[0].reshape(-1, 3).astype(np.float64)
            values, counts = np.unique(img, axis=0, return_counts=True)
            top2 = values[np.argsort(counts)[-2:]]
            # Every pixel is a blend of the two most common ones (anti-aliased edges in between).
            a, b = top2
            t = np.clip(((img - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
            assert np.max(np.abs(a + t[:, None] * (b - a) - img)) <= 1.5
            # and those two are the named foreground and background colours.
            named = {tuple(np.rint(255 * np.asarray(TEXTURE_COLORS[f[k]]))) for k in ("color", "background_color")}
            assert {tuple(a), tuple(b)} == named


def test_speckled_is_high_frequency_and_stripes_are_not():
    ds = build_dataset("textures", image_size=32, num_examples=400)

    def roughness(i):
        grey = ds.raw(i)[0].astype(np.float64).mean(-1)
        return np.abs(np.diff(grey, axis=1)).mean() / (grey.std() + 1e-9)

    speckled = [roughness(i) for i in _examples(ds, "speckled", 10)]
    striped = [roughness(i) for i in _examples(ds, "striped", 10)]
    assert min(speckled) > max(striped)
