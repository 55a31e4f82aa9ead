"""Checkpoints: exact round trip, atomic writes that survive a failure, and mismatch errors that list keys."""
import os

import pytest
import torch
from safetensors.torch import save_file

import sparsevision.train.checkpoint as ckpt
from sparsevision import create_model
from sparsevision.train import (latest_checkpoint, list_checkpoints, load_checkpoint_model, load_model_weights,
                                save_model_weights)


def _model(**kw):
    torch.manual_seed(0)
    return create_model("vit_tiny_test", head_zero_init=False, **kw)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_round_trip_exactly(tmp_path):
    src = _model()
    save_model_weights(src, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    dst = create_model("vit_tiny_test")
    assert not _same(src, dst)
    missing, unexpected = load_model_weights(dst, tmp_path / "w.safetensors")
    assert missing == [] and unexpected == [] and _same(src, dst)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left behind


def test_mismatches_list_the_offending_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    save_model_weights(_model(num_classes=7), path)
    with pytest.raises(ValueError, match=r"shape mismatch: head.bias \(file \(7,\), model \(10,\)\), "
                                         r"head.weight \(file \(7, 32\), model \(10, 32\)\)"):
        load_model_weights(_model(), path)

    state = dict(_model().state_dict())
    state["extra.weight"] = torch.zeros(2)
    del state["norm.bias"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r"missing from the file: norm.bias; not in the model: extra.weight"):
        load_model_weights(_model(), path)
    model = _model()
    missing, unexpected = load_model_weights(model, path, strict=False)
    assert (missing, unexpected) == (["norm.bias"], ["extra.weight"])
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])

    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model_weights(_model(), path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_model_weights(_model(), tmp_path / "absent.safetensors")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    good = _model()
    ckpt.save_checkpoint(tmp_path, 5, good, {"step": 5}, {"x": 1})
    real_save = ckpt.save_file

    def crash_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)  # a torn file, then the "power cut"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash_half_way)
    torch.manual_seed(3)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 10, create_model("vit_tiny_test"), {"step": 10}, {"x": 1})
    with pytest.raises(OSError, match="disk full"):
        save_model_weights(good, tmp_path / "checkpoints" / "step_00000005" / "model.safetensors")
    monkeypatch.setattr(ckpt, "save_file", real_save)

    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_00000005"]  # temporaries cleaned up
    restored = create_model("vit_tiny_test")
    load_model_weights(restored, latest_checkpoint(tmp_path) / "model.safetensors")
    assert _same(good, restored)
    assert ckpt.load_training_state(latest_checkpoint(tmp_path))["step"] == 5


def test_a_leftover_temporary_directory_is_not_a_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, _model(), {"step": 1}, {})
    torn = tmp_path / "checkpoints" / ".tmp-step_00000002-999"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_00000001"


def test_keep_deletes_only_older_checkpoints(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, _model(), {"step": step}, {}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_load_checkpoint_model_rebuilds_from_the_run(tiny_config):
    from sparsevision.train import train

    config = tiny_config(steps=3, eval_every=0)
    train(config, progress=False)
    model, loaded = load_checkpoint_model(config.out_dir)
    assert loaded.model.overrides == {"num_classes": 10, "img_size": 32}  # filled in from the data
    file_model, _ = load_checkpoint_model(latest_checkpoint(config.out_dir) / "model.safetensors")
    assert _same(model, file_model) and not model.training
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_checkpoint_model(config.out_dir + "/checkpoints")
