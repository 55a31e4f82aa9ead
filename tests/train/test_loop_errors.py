"""Divergence and broken run directories: training stops before saving bad weights and says what to do."""
import pytest
import torch

from sparsevision.train import ClassificationObjective, NonFiniteLossError, latest_checkpoint, train
from sparsevision.train.checkpoint import load_checkpoint_model


class NanEvalAfter(ClassificationObjective):
    """Classification whose evaluation loss is NaN from the n-th training step on (as diverged weights give)."""

    def __init__(self, bad_step):
        super().__init__()
        self.bad_step, self.train_calls = bad_step, 0

    def __call__(self, model, batch):
        loss, metrics = super().__call__(model, batch)
        if torch.is_grad_enabled():
            self.train_calls += 1
        elif self.train_calls >= self.bad_step:
            loss = loss * float("nan")
            metrics["loss"] = loss
        return loss, metrics


def test_nan_validation_loss_stops_before_the_checkpoint(tiny_config):
    config = tiny_config(sets=["eval_every=2", "checkpoint_every=2", "keep_checkpoints=1"])
    with pytest.raises(NonFiniteLossError, match=r"validation loss is nan at step 4; training stopped without "
                                                 r"saving \(the last good checkpoint .*step_00000002 is kept\)"):
        train(config, objective=NanEvalAfter(4), progress=False)
    assert latest_checkpoint(config.out_dir).name == "step_00000002"
    model, _ = load_checkpoint_model(config.out_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_divergence_right_after_a_save_says_so_and_advice_fits_the_config(tiny_config):
    # lr 1e6 (clipping on, the preset's default) diverges within a few steps; a checkpoint every step means the
    # newest one was written just before the non-finite loss.
    config = tiny_config(sets=["optim.lr=1e6", "checkpoint_every=1", "eval_every=0"])
    with pytest.raises(NonFiniteLossError) as caught:
        train(config, progress=False)
    message = str(caught.value)
    assert "was saved one step earlier and may already hold the diverged weights" in message
    assert "grad_clip_norm" not in message  # already on: no advice to turn it on
    config = tiny_config("noclip", sets=["optim.lr=1e6", "optim.grad_clip_norm=0", "eval_every=0"])
    with pytest.raises(NonFiniteLossError, match=r"no checkpoint had been saved yet.*optim.grad_clip_norm=1"):
        train(config, progress=False)


def test_run_that_stopped_before_its_first_checkpoint(tiny_config):
    config = tiny_config(sets=["optim.lr=1e6", "eval_every=0"])
    with pytest.raises(NonFiniteLossError):
        train(config, progress=False)
    with pytest.raises(ValueError, match="stopped before its first checkpoint \\(nothing to resume\\); delete it"):
        train(config, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint .* to resume from \\(the run stopped before its"):
        train(config, resume=True, progress=False)


def test_model_that_does_not_fit_the_data_is_refused_before_training(tiny_config):
    with pytest.raises(ValueError, match=r"model.overrides.num_classes=20 does not match the data: digits has 10 "
                                         r"classes"):
        train(tiny_config("wide", sets=["model.overrides.num_classes=20"]), progress=False)
    with pytest.raises(ValueError, match=r"model.overrides.img_size=16 does not match the data: data.image_size=32"):
        train(tiny_config("small", sets=["model.overrides.img_size=16"]), progress=False)
    # The same values written another way are no mismatch.
    train(tiny_config("same", sets=["model.overrides.img_size=[32,32]", "model.overrides.num_classes=10"], steps=1,
                      eval_every=0), progress=False)


def test_resume_on_a_dataset_with_other_classes_is_refused(tiny_config, capsys):
    from sparsevision.cli import main

    config = tiny_config(steps=3, eval_every=0)
    train(config, progress=False)
    assert main(["train", "--out", config.out_dir, "--resume", "--steps", "5", "--no-progress",
                 "--set", "data.dataset=dsprites_shape"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sparsevision train: error: model.overrides.num_classes=10 does not match the data: "
                          "dsprites_shape has 3 classes (a resumed run keeps the model it was built with")


def test_stop_after_must_lie_ahead(tiny_config):
    with pytest.raises(ValueError, match=r"stop_after=0 \(--stop-after\) must be >= 1"):
        train(tiny_config("zero"), stop_after=0, progress=False)
    config = tiny_config(eval_every=0)
    train(config, stop_after=2, progress=False)
    with pytest.raises(ValueError, match=r"stop_after=2 \(--stop-after\) is not after the checkpoint's step 2"):
        train(config, resume=True, stop_after=2, progress=False)
    assert train(config, resume=True, stop_after=3, progress=False).step == 3
