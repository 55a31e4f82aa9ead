"""dSprites-like tasks: labels follow VTAB's binning of the factors, and the rendering agrees with the factors."""
import numpy as np
import pytest

from sparsevision.data import build_dataset

# dSprites latent grid (Matthey et al. 2017): x, y in linspace(0, 1, 32); scale in linspace(0.5, 1, 6).
X_GRID = np.linspace(0.0, 1.0, 32)
SCALE_GRID = np.linspace(0.5, 1.0, 6)


def _vtab_label(original_index: int, num_original: int, num_classes: int) -> int:
    # task_adaptation's dsprites: label = floor(index / (num_original / num_classes)).
    return int(np.floor(original_index / (num_original / num_classes)))


def test_factors_lie_on_the_dsprites_grid():
    ds = build_dataset("dsprites_shape", num_examples=300)
    for i in range(300):
        f = ds.factors(i)
        assert f["shape"] in ("square", "ellipse", "heart")
        assert np.min(np.abs(X_GRID - f["x"])) < 1e-12 and np.min(np.abs(X_GRID - f["y"])) < 1e-12
        assert np.min(np.abs(SCALE_GRID - f["scale"])) < 1e-12
        k = f["orientation_deg"] / 9.0
        assert abs(k - round(k)) < 1e-9 and 0 <= round(k) < 40


def test_location_label_is_vtab_bin_of_x():
    ds = build_dataset("dsprites_location", num_examples=400)
    assert ds.num_classes == 16
    for i in range(400):
        x_index = int(np.argmin(np.abs(X_GRID - ds.factors(i)["x"])))
        assert ds[i][1] == _vtab_label(x_index, 32, 16)


def test_orientation_label_is_vtab_bin_of_angle():
    ds = build_dataset("dsprites_orientation", num_examples=400)
    assert ds.num_classes == 16
    for i in range(400):
        o_index = int(round(ds.factors(i)["orientation_deg"] / 9.0))
        assert ds.label(i) == _vtab_label(o_index, 40, 16)


def test_shape_label_and_tasks_share_images():
    shape = build_dataset("dsprites_shape", num_examples=50)
    loc = build_dataset("dsprites_location", num_examples=50)
    assert shape.class_names == ["square", "ellipse", "heart"]
    for i in range(50):
        assert shape.class_names[shape[i][1]] == shape.factors(i)["shape"]
        assert np.array_equal(shape.raw(i)[0], loc.raw(i)[0])


def _moments(img):
    w = img.astype(np.float64).sum(-1)
    rows, cols = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    m = w.sum()
    cx, cy = (w * cols).sum() / m, (w * rows).sum() / m
    cov = np.cov(np.stack([cols.ravel(), rows.ravel()]), aweights=w.ravel())
    return m, cx, cy, cov


def test_centroid_is_an_affine_function_of_the_position_factors():
    ds = build_dataset("dsprites_shape", image_size=64, num_examples=400)
    fx, fy, cx, cy = [], [], [], []
    for i in range(400):
        f = ds.factors(i)
        if f["shape"] == "heart":  # not centrally symmetric: its centroid is off its centre
            continue
        _, x, y, _ = _moments(ds.raw(i)[0])
        fx.append(f["x"]); fy.append(f["y"]); cx.append(x); cy.append(y)
    slope_x, icpt_x = np.polyfit(fx, cx, 1)
    slope_y, icpt_y = np.polyfit(fy, cy, 1)
    assert slope_x > 20 and np.max(np.abs(np.polyval([slope_x, icpt_x], fx) - cx)) < 0.25
    assert np.max(np.abs(np.polyval([slope_y, icpt_y], fy) - cy)) < 0.25
    # x and y use the same mapping, with y = 0 at the top of the image.
    assert abs(slope_x - slope_y) < 0.2 and abs(icpt_x - icpt_y) < 0.2


def test_area_scales_with_scale_squared():
    ds = build_dataset("dsprites_shape", image_size=64, num_examples=300, colored=False)
    ratios = {"square": [], "ellipse": [], "heart": []}
    for i in range(300):
        f = ds.factors(i)
        area = ds.raw(i)[0][..., 0].astype(np.float64).sum() / 255.0
        ratios[f["shape"]].append(area / f["scale"] ** 2)
    for shape, r in ratios.items():
        # Constant up to anti-aliasing, wherever the sprite is: none is clipped by the image border.
        assert np.std(r) / np.mean(r) < 0.02 and np.min(r) / np.mean(r) > 0.94, shape
    # A unit square of half-size h has area 4 h^2; a 2:1 ellipse inscribed in it pi h^2 / 2.
    assert np.mean(ratios["ellipse"]) / np.mean(ratios["square"]) == pytest.approx(np.pi / 8, rel=0.03)


def test_ellipse_major_axis_follows_orientation_counter_clockwise():
    ds = build_dataset("dsprites_shape", image_size=64, num_examples=400)
    checked = 0
    for i in range(400):
        f = ds.factors(i)
        if f["shape"] != "ellipse" or f["scale"] < 0.7:
            continue
        _, _, _, cov = _moments(ds.raw(i)[0])
        evals, evecs = np.linalg.eigh(cov)
        major = evecs[:, 1]
        # Image rows grow downward, so a counter-clockwise angle on screen has a negative row component.
        angle = np.degrees(np.arctan2(-major[1], major[0])) % 180.0
        diff = abs(angle - f["orientation_deg"] % 180.0)
        assert min(diff, 180.0 - diff) < 4.0, (f, angle)
        checked += 1
    assert checked > 20


def test_colour_factor_matches_pixels_and_colored_false_is_white():
    ds = build_dataset("dsprites_shape", image_size=48, num_examples=200)
    dominant = {"red": 0, "green": 1, "blue": 2}
    for i in range(200):
        color = ds.factors(i)["color"]
        if color in dominant:
            img = ds.raw(i)[0].astype(int)
            brightest = img[np.unravel_index(np.argmax(img.sum(-1)), img.shape[:2])]
            assert np.argmax(brightest) == dominant[color]
    white = build_dataset("dsprites_shape", num_examples=20, colored=False)
    for i in range(20):
        img = white.raw(i)[0]
        assert white.factors(i)["color"] == "white"
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
        assert img.max() == 255 and img.min() == 0  # on black, fully covered pixels at full white
