"""BiT-HyperRule values against a transcription of the published rule (big_transfer/bit_hyperrule.py)."""
import pytest

from sparsevision.transfer import FinetuneConfig, default_flip, hyperrule, learning_rate


def published_schedule(n):  # the paper's / released rule, written out by hand
    if n < 20_000:
        return [100, 200, 300, 400, 500]
    if n < 500_000:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def published_lr(step, n, base_lr=0.003):
    supports = published_schedule(n)
    if step < supports[0]:
        return base_lr * step / supports[0]
    for s in supports[1:]:
        if s < step:
            base_lr /= 10
    return base_lr


@pytest.mark.parametrize("n", [1, 1000, 19_999, 20_000, 50_000, 499_999, 500_000, 1_281_167])
def test_schedule_and_mixup_follow_the_rule(n):
    config = hyperrule(n)
    warmup, *boundaries, total = published_schedule(n)
    assert (config.warmup_steps, config.lr_boundaries, config.steps) == (warmup, tuple(boundaries), total)
    assert config.mixup_alpha == (0.0 if n < 20_000 else 0.1)
    assert (config.lr, config.momentum, config.batch_size, config.weight_decay) == (0.003, 0.9, 512, 0.0)
    for step in sorted({0, 1, warmup - 1, warmup, *boundaries, *(b + 1 for b in boundaries), total - 1}):
        assert learning_rate(step, config) == pytest.approx(published_lr(step, n), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("side,expected", [(8, (160, 128)), (32, (160, 128)), (95, (160, 128)),
                                           (96, (512, 480)), (224, (512, 480)), (500, (512, 480))])
def test_resolution_rule(side, expected):
    config = hyperrule(1000, side * side, resolution="hyperrule")
    assert (config.resize, config.crop) == expected
    assert hyperrule(1000, 95 * 97, resolution="hyperrule").crop == 128  # area, not side: 9215 < 96*96
    assert hyperrule(1000, 96 * 97, resolution="hyperrule").crop == 480


def test_resolution_choices():
    assert (hyperrule(1000, 32 * 32).resize, hyperrule(1000, 32 * 32).crop) == (None, None)  # the model's own
    assert (hyperrule(1000, resolution=64).resize, hyperrule(1000, resolution=64).crop) == (64, 64)
    assert hyperrule(1000, resolution=128).resize == 160
    with pytest.raises(ValueError, match="image_area"):
        hyperrule(1000, resolution="hyperrule")
    with pytest.raises(ValueError, match="resolution"):
        hyperrule(1000, resolution="huge")


def test_steps_scale_shrinks_everything_in_proportion():
    config = hyperrule(5000, steps_scale=0.1)
    assert (config.steps, config.warmup_steps, config.lr_boundaries) == (50, 10, (20, 30, 40))
    config = hyperrule(100_000, steps_scale=0.01)
    assert (config.steps, config.warmup_steps, config.lr_boundaries) == (100, 5, (30, 60, 90))
    tiny = hyperrule(100, steps_scale=0.001)
    assert tiny.steps == 1 and tiny.warmup_steps == 0 and learning_rate(0, tiny) == 0.003
    with pytest.raises(ValueError, match="steps_scale"):
        hyperrule(100, steps_scale=0)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="warmup_steps"):
        FinetuneConfig(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneConfig(batch_size=0)
    with pytest.raises(ValueError, match="resize"):
        FinetuneConfig(resize=32, crop=64)
    with pytest.raises(ValueError, match="unknown FinetuneConfig fields: bogus"):
        hyperrule(100, bogus=1)


def test_flip_is_off_where_it_changes_labels():
    assert not default_flip("digits") and not default_flip("dsprites_location")
    assert not default_flip("dsprites_orientation")
    assert default_flip("dsprites_shape") and default_flip("textures") and default_flip("folder:/data/cats")
