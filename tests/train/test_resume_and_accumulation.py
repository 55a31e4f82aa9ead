"""Resuming reproduces an uninterrupted run exactly; accumulating k micro-batches of b equals one batch of k*b."""
import torch

from sparsevision.train import latest_checkpoint, list_checkpoints, load_model_weights, read_metrics, train
from sparsevision import create_model

# Dropout and random-crop augmentation make the run depend on the RNG states and per-step generators that a resume
# has to restore; two micro-batches per step exercise accumulation on the way.
STOCHASTIC = ["log_every=1", "model.overrides.dropout=0.1", "data.augment=crop", "accum_steps=2"]


def _records(run_dir):
    drop = {"throughput"}
    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(run_dir)]


def _weights(run_dir):
    model = create_model("vit_tiny_test", dropout=0.1)
    load_model_weights(model, latest_checkpoint(run_dir) / "model.safetensors")
    return model.state_dict()


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tiny_config):
    whole = tiny_config("whole", sets=STOCHASTIC)
    split = tiny_config("split", sets=STOCHASTIC)
    train(whole, progress=False)
    first = train(split, stop_after=6, progress=False)
    assert first.stopped_early and first.test == {} and [s for s, _ in list_checkpoints(split.out_dir)] == [6]
    train(split, resume=True, progress=False)

    a, b = _records(whole.out_dir), _records(split.out_dir)
    assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
    assert len([r for r in a if r["split"] == "train"]) == whole.steps
    for ra, rb in zip(a, b):
        assert ra == rb  # bit-for-bit: losses, accuracies, lr and gradient norms of every step
    wa, wb = _weights(whole.out_dir), _weights(split.out_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_a_crash_drops_records_past_the_checkpoint(tiny_config):
    config = tiny_config(sets=["log_every=1"])
    train(config, stop_after=6, progress=False)
    with open(f"{config.out_dir}/metrics.jsonl", "a") as f:
        f.write('{"step": 7, "split": "train", "loss": 9.0}\n{"step": 8, "spl')  # logged after the last save, torn
    train(config, resume=True, progress=False)
    steps = [r["step"] for r in read_metrics(config.out_dir) if r["split"] == "train"]
    assert steps == list(range(1, config.steps + 1))


def test_accumulation_matches_the_full_batch(tiny_config):
    runs = {}
    for k in (1, 4):
        # Plain SGD: the weights move by lr * gradient, so equal weights mean equal gradients (Adam's 1/sqrt(v)
        # would magnify float32 summation-order noise in near-zero gradient entries).
        config = tiny_config(f"accum{k}", sets=["log_every=1", "steps=4", "eval_every=0", f"accum_steps={k}",
                                                "optim.name=sgd", "optim.momentum=0", "optim.lr=0.5"])
        train(config, progress=False)
        runs[k] = config.out_dir
    a = [r for r in read_metrics(runs[1]) if r["split"] == "train"]
    b = [r for r in read_metrics(runs[4]) if r["split"] == "train"]
    for ra, rb in zip(a, b):
        assert abs(ra["loss"] - rb["loss"]) < 1e-6 and abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-6
        assert ra["accuracy"] == rb["accuracy"]
    wa, wb = _weights(runs[1]), _weights(runs[4])
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
