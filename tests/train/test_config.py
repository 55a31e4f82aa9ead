"""Config JSON round trip, `--set` parsing with field types, named errors, and the preset registry."""
import dataclasses
import json

import pytest

from sparsevision.train import (TrainConfig, apply_overrides, config_from_dict, config_to_dict, get_preset,
                                list_presets, register_preset)
from sparsevision.train.config import validate


def test_set_parses_each_field_with_its_type():
    c = apply_overrides(TrainConfig(), [
        "optim.lr=3e-4", "steps=2_000", "optim.betas=0.9,0.95", "optim.step_boundaries=[100, 200]",
        "loss.label_smoothing=0.1", "data.dataset=folder:/data/x=y", "optim.grad_clip_norm=0",
        "model.overrides.num_experts=4", "model.overrides.pool=gap", "model.overrides.router={\"k\": 2}",
        "objective_args={\"temperature\": 0.5}",
    ])
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert c.steps == 2000 and isinstance(c.steps, int)
    assert c.optim.betas == (0.9, 0.95)
    assert c.optim.step_boundaries == (100, 200)
    assert c.data.dataset == "folder:/data/x=y"  # only the first '=' splits key from value
    assert c.optim.grad_clip_norm == 0.0
    assert c.model.overrides == {"num_experts": 4, "pool": "gap", "router": {"k": 2}}
    assert c.objective_args == {"temperature": 0.5}
    # The original is frozen and untouched.
    assert TrainConfig().model.overrides == {} and TrainConfig().steps == 1000


def test_whole_dict_and_nested_dict_entries():
    c = apply_overrides(TrainConfig(), ['model.overrides={"depth": 3}', "model.overrides.moe.k=2"])
    assert c.model.overrides == {"depth": 3, "moe": {"k": 2}}


@pytest.mark.parametrize("assignment, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean optim.lr"),
    ("stepz=3", "did you mean steps"),
    ("steps=1.5", "steps: expected an integer, got '1.5'"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("optim.betas=0.9", "optim.betas: expected 2 values"),
    ("optim=3", "'optim' is a section"),
    ("steps", "--set expects key=value"),
    ("optim..lr=1", "bad key"),
    ("model.overrides=[1]", "model.overrides: expected a JSON object"),
])
def test_bad_assignments_name_the_problem(assignment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[").replace("'", "'")):
        apply_overrides(TrainConfig(), [assignment])


@pytest.mark.parametrize("assignment, message", [
    ("optim.name=adam", "optim.name='adam' is not one of adamw, sgd"),
    ("accum_steps=3", "not divisible by accum_steps=3"),
    ("steps=0", "steps must be >= 1"),
    ("precision=fp8", "precision='fp8' is not one of"),
    ("optim.warmup_steps=5000", "warmup_steps=5000 must be < steps=1000"),
])
def test_validate_names_bad_values(assignment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate(apply_overrides(TrainConfig(), [assignment]))


def test_json_round_trip_and_unknown_keys():
    c = apply_overrides(get_preset("vit-s16-i1k"), ["model.overrides.dropout=0.1"])
    data = json.loads(json.dumps(config_to_dict(c)))
    assert config_from_dict(data) == c
    data["optim"]["learning_rate"] = 1.0
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        config_from_dict(data)


def test_presets_registry():
    names = list_presets()
    for name in ["default", "test", "mixer-default", "vit-b16-i1k", "vit-s16-i1k", "mixer-b16-i1k"]:
        assert name in names
    with pytest.raises(ValueError, match="unknown preset 'defualt'; did you mean default"):
        get_preset("defualt")
    custom = dataclasses.replace(get_preset("test"), steps=3)
    register_preset("custom-for-test", custom)
    assert get_preset("custom-for-test").steps == 3
    with pytest.raises(ValueError, match="registered twice"):
        register_preset("custom-for-test", custom)
    register_preset("custom-for-test", lambda: dataclasses.replace(custom, steps=5), overwrite=True)
    assert get_preset("custom-for-test").steps == 5


def test_i1k_recipe_matches_big_vision():
    # big_vision configs/vit_i1k.py: lr 1e-3 and decoupled wd 1e-4 = lr * weight_decay in torch's AdamW convention.
    c = get_preset("vit-b16-i1k")
    assert c.optim.lr * c.optim.weight_decay == pytest.approx(1e-4)
    assert (c.data.batch_size, c.optim.warmup_steps, c.optim.schedule, c.optim.grad_clip_norm) == (
        4096, 10_000, "cosine", 1.0)
    assert c.steps == pytest.approx(300 * 1_281_167 * 0.99 / 4096, abs=1)  # 300 epochs of train[:99%]
