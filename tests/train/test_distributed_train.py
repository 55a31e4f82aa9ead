"""`sparsevision train` data / expert parallel: 2 gloo processes against one process on the same global batches.

One 2-process job (process start-up dominates the cost) runs, in order: a V-MoE through `train()` (experts sharded
over both ranks), a 1-process checkpoint resumed on 2 ranks, a dense ViT through the CLI's `--distributed` path
(with gradient accumulation and crop+flip augmentation, which must also be split exactly), the V-MoE with its
training step under torch.compile in two micro-batches, and last a run in which rank 1 raises. The references are
plain one-process runs of the same configs, which share no parallel code: no process group, no sharding, no DDP.

Tolerance. Everything runs in float32. The two runs compute the same function but sum in different orders (the
batch mean over two halves, DDP's all-reduce, the experts' gradients gathered from both ranks), so they differ by
float32 rounding: measured differences of at most 4e-7 in the per-step loss, task loss, aux loss and gradient
norm. LOSS_TOL = 1e-4 sits well above that and well below what real errors do here (measured on the one-process
run: halving the experts' gradients moves the logged gradient norm by 1e-2 to 2.5e-2; another data order moves
the losses by 5e-2 to 0.24). Weights are compared for the experts only, to EXPERT_TOL = 1e-4 (measured 2e-5):
AdamW divides each update by sqrt(v), which turns rounding in gradient entries that should be zero (e.g. the key
biases of attention) into differences of up to ~lr = 3e-3, while an expert that missed one update is ~lr off.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from sparsevision import cli as dispatcher
from sparsevision.data import build_dataset, random_crop_flip
from sparsevision.distributed import DistributedContext, DistributedError, launch_local, unwrap
from sparsevision.models.loading import load_model
from sparsevision.moe.parallel import expert_parallel_params
from sparsevision.train import ClassificationObjective, apply_overrides, get_preset, read_metrics, train
from sparsevision.train.batches import EpochBatchSampler, eval_loaders
from sparsevision.train.checkpoint import load_training_state
from sparsevision.train.parallel import check_batch, explain_failure, is_collective_failure

WORLD = 2
LOSS_TOL = 1e-4
EXPERT_TOL = 1e-4
# dsprites_shape is generated on the fly (digits would import scikit-learn in every spawned process).
COMMON = ["data.dataset=dsprites_shape", "data.batch_size=8", "log_every=1", "eval_every=0", "optim.warmup_steps=0"]
# V-MoE with 4 experts (2 per rank); no router noise, which is drawn per rank and would differ by design. With
# V-MoE's zero-initialised head nothing below the head gets a gradient in the first step, and the experts would
# hardly matter within 4 steps.
MOE = COMMON + ["model.name=vmoe_tiny_test", "model.overrides.noise_std=0", "model.overrides.head_zero_init=false",
                "steps=4", "checkpoint_every=2", "keep_checkpoints=2"]
DENSE = COMMON + ["steps=3", "accum_steps=2", "data.augment=crop_flip"]
SPLIT_SIZES = {"train": 64, "val": 45, "test": 31}  # odd: one example is left over when split over 2 ranks


def _config(out: Path, sets: list[str]):
    return dataclasses.replace(apply_overrides(get_preset("test"), sets), out_dir=str(out))


def _train_records(run_dir) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == "train"]


class Probe(ClassificationObjective):
    """Classification that remembers, on every call, the expert parameters this rank holds and its batch size,
    and optionally raises on rank `fail_rank` at its `fail_call`-th training call."""

    def __init__(self, rank: int = 0, fail_rank: int | None = None, fail_call: int = 0):
        super().__init__()
        self.rank, self.fail_rank, self.fail_call, self.calls = rank, fail_rank, fail_call, 0
        self.experts: dict[str, torch.Tensor] = {}
        self.local_batch = None
        self.grad_sync: list[bool] = []  # per training call: would DDP all-reduce in this backward?

    def build_dataset(self, config, split):
        return build_dataset(config.data.dataset, split=split, image_size=config.data.image_size,
                             seed=config.data.seed, num_examples=SPLIT_SIZES[split])

    def __call__(self, model, batch):
        if torch.is_grad_enabled():
            self.calls += 1
            self.local_batch = len(batch[1])
            ddp = getattr(model, "_orig_mod", model)  # under torch.compile the DDP module is wrapped
            self.grad_sync.append(getattr(ddp, "require_backward_grad_sync", True))
            if self.rank == self.fail_rank and self.calls == self.fail_call:
                raise RuntimeError(f"injected failure on rank {self.rank}")
        self.experts = {n: p.detach().clone() for n, p in expert_parallel_params(unwrap(model)).items()}
        return super().__call__(model, batch)

    def on_train_end(self, model, run_dir):  # the routing plot is not what these tests are about (and it is slow)
        return None


def _job(ctx: DistributedContext, root: Path) -> dict:
    out = {}
    # 1. V-MoE, experts sharded over the two ranks, through the Python API.
    probe = Probe(ctx.rank)
    result = train(_config(root / "moe2", MOE), objective=probe, progress=False, ctx=ctx)
    out["moe"] = dict(rank=result.rank, val=result.val, test=result.test, experts=probe.experts,
                      local_batch=probe.local_batch)
    # 2. A checkpoint written by one process (step 2 of the reference) resumed on two ranks.
    train(_config(root / "moe1_to_2", MOE), resume=True, objective=Probe(ctx.rank), progress=False, ctx=ctx)
    # 3. Dense ViT (pure DDP) through the command line: `train --distributed` adopts the running process group.
    out["cli"] = dispatcher.main(["train", "--distributed", "--preset", "test", "--out", str(root / "dense2"),
                                  "--no-progress", "--set", *DENSE])
    # 4. The V-MoE again with the training step traced by torch.compile (aot_eager: the same ops, no codegen), in
    # two micro-batches per step (the images are routed one by one, so this is the same function).
    probe = Probe(ctx.rank)
    train(_config(root / "moe2_compiled", MOE + ["compile=aot_eager", "accum_steps=2"]), objective=probe,
          progress=False, ctx=ctx)
    out["compiled_grad_sync"] = probe.grad_sync
    # 5. Rank 1 raises in its second training step; rank 0 is then waiting for it in the experts' all-to-all.
    start = time.monotonic()
    try:
        train(_config(root / "fail", MOE), objective=Probe(ctx.rank, fail_rank=1, fail_call=2), progress=False,
              ctx=ctx)
    except Exception as err:  # noqa: BLE001 - the error is what this scenario checks
        out["failure"] = (type(err).__name__, str(err), time.monotonic() - start)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed_train")
    timings = {}
    start = time.monotonic()
    train(_config(root / "moe1", MOE), objective=Probe(), progress=False)
    shutil.copytree(root / "moe1", root / "moe1_to_2")
    shutil.rmtree(root / "moe1_to_2" / "checkpoints" / "step_00000004")
    assert dispatcher.main(["train", "--preset", "test", "--out", str(root / "dense1"), "--no-progress",
                            "--set", *DENSE]) == 0
    timings["references"] = time.monotonic() - start
    start = time.monotonic()
    results = launch_local(_job, WORLD, args=(root,), timeout_s=20, join_timeout_s=120, raise_on_error=False)
    timings["job"] = time.monotonic() - start
    for r in results:
        assert r.ok, r.error
    # 2 -> 1: the 2-process checkpoint of step 2, resumed by one process.
    shutil.copytree(root / "moe2", root / "moe2_to_1")
    shutil.rmtree(root / "moe2_to_1" / "checkpoints" / "step_00000004")
    train(_config(root / "moe2_to_1", MOE), resume=True, objective=Probe(), progress=False)
    print(f"timings: {timings}")
    return root, [r.value for r in results]


def _assert_same_losses(got: list[dict], want: list[dict], what: str) -> float:
    assert [r["step"] for r in got] == [r["step"] for r in want], what
    worst = 0.0
    for a, b in zip(got, want):
        for key in ("loss", "task_loss", "aux_loss", "grad_norm"):
            if key in b:
                err = abs(a[key] - b[key])
                worst = max(worst, err)
                assert err <= LOSS_TOL, f"{what}, step {b['step']}: {key} {a[key]} != {b[key]} (one process)"
        assert a["lr"] == b["lr"]
    return worst


def test_two_ranks_train_like_one_process_and_hold_half_of_the_experts(runs):
    root, ranks = runs
    worst = _assert_same_losses(_train_records(root / "moe2"), _train_records(root / "moe1"), "V-MoE, 2 ranks")
    print(f"V-MoE: largest loss / grad-norm difference to one process {worst:.2e}")
    for split in ("val", "test"):  # the split shards plus the left-over example, counted once
        one = [r for r in read_metrics(root / "moe1") if r["split"] == split][-1]
        for rank in ranks:
            for key in ("loss", "accuracy"):
                assert abs(rank["moe"][split][key] - one[key]) <= LOSS_TOL, (split, key)

    # Each rank holds experts [r * E/2, (r + 1) * E/2) of every MoE layer, and nothing else of the experts; the
    # checkpoint rank 0 wrote holds them all, in the one-process layout that load_model reads.
    model, name = load_model(str(root / "moe2"))
    assert name == "vmoe_tiny_test"
    full = model.state_dict()
    one = load_model(str(root / "moe1"))[0].state_dict()
    experts = [rank["moe"]["experts"] for rank in ranks]
    assert experts[0].keys() == experts[1].keys() and len(experts[0]) == 4 * len(model.moe_layers)
    assert sorted(experts[0]) == sorted(expert_parallel_keys(full))
    for key, local in experts[0].items():
        num_experts = full[key].shape[0]
        assert num_experts == 4 and local.shape == (num_experts // WORLD, *full[key].shape[1:]), key
        assert torch.equal(torch.cat([experts[0][key], experts[1][key]]), full[key]), key
        assert (full[key] - one[key]).abs().max() <= EXPERT_TOL, f"{key}: 2 ranks and one process trained apart"
    assert [rank["moe"]["local_batch"] for rank in ranks] == [4, 4]  # half of the global batch of 8

    # Only rank 0 wrote: one record per step, one config.json, the checkpoints of steps 2 and 4.
    assert [r["step"] for r in _train_records(root / "moe2")] == [1, 2, 3, 4]
    assert sorted(p.name for p in (root / "moe2" / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    assert json.loads((root / "moe2" / "config.json").read_text())["data"]["batch_size"] == 8


def test_compiled_expert_parallel_training_matches_one_process(runs):
    root, results = runs
    worst = _assert_same_losses(_train_records(root / "moe2_compiled"), _train_records(root / "moe1"),
                                "V-MoE, 2 ranks, compile=aot_eager")
    # Gradients are all-reduced once per step, in the last micro-batch, through the compiled module too.
    for rank, result in enumerate(results):
        assert result["compiled_grad_sync"] == [False, True] * 4, rank
    print(f"compiled V-MoE on 2 ranks: largest loss / grad-norm difference to one process {worst:.2e}")


def test_checkpoints_move_between_two_ranks_and_one(runs):
    root, _ = runs
    one = _train_records(root / "moe1")
    # 2 -> 1: saved by two ranks at step 2, continued by one process.
    resumed = _train_records(root / "moe2_to_1")
    worst = _assert_same_losses(resumed, one, "2 ranks -> 1 process")
    # 1 -> 2: saved by one process at step 2, continued by two ranks.
    worst = max(worst, _assert_same_losses(_train_records(root / "moe1_to_2"), one, "1 process -> 2 ranks"))
    print(f"resumed runs: largest loss / grad-norm difference to the uninterrupted one-process run {worst:.2e}")
    final = load_model(str(root / "moe1"))[0].state_dict()
    for run in ("moe2_to_1", "moe1_to_2"):
        # The step-4 checkpoint had been deleted from the copy: the resumed run wrote it, with the same experts.
        assert (root / run / "checkpoints" / "step_00000004").is_dir(), run
        resumed_state = load_model(str(root / run))[0].state_dict()
        for key in expert_parallel_keys(final):
            assert (resumed_state[key] - final[key]).abs().max() <= EXPERT_TOL, (run, key)
    # The optimiser state was saved whole: AdamW's moments of an expert cover all E experts, as in one process.
    two = load_training_state(root / "moe2" / "checkpoints" / "step_00000004")["optimizer"]
    ref = load_training_state(root / "moe1" / "checkpoints" / "step_00000004")["optimizer"]
    assert two["param_groups"] == ref["param_groups"] and two["state"].keys() == ref["state"].keys()
    worst = 0.0
    for index, state in ref["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert two["state"][index][name].shape == state[name].shape
            worst = max(worst, (two["state"][index][name] - state[name]).abs().max().item())
    assert worst <= LOSS_TOL
    print(f"AdamW moments, 2 ranks vs one process: largest difference {worst:.2e}")


def expert_parallel_keys(state: dict) -> list[str]:
    return [key for key in state if ".experts." in key]


def test_dense_vit_through_the_cli_matches_one_process(runs):
    root, ranks = runs
    assert [rank["cli"] for rank in ranks] == [0, 0]
    worst = _assert_same_losses(_train_records(root / "dense2"), _train_records(root / "dense1"), "ViT, 2 ranks")
    print(f"ViT (DDP, accumulation, crop+flip): largest loss difference to one process {worst:.2e}")
    test = [[r for r in read_metrics(root / run) if r["split"] == "test"][-1] for run in ("dense1", "dense2")]
    assert abs(test[0]["accuracy"] - test[1]["accuracy"]) <= LOSS_TOL
    assert abs(test[0]["loss"] - test[1]["loss"]) <= LOSS_TOL
    saved = json.loads((root / "dense2" / "config.json").read_text())
    assert saved["distributed"]["enabled"] is True and saved["accum_steps"] == 2


def test_a_rank_that_raises_stops_the_other_with_its_name(runs):
    _, ranks = runs
    kind, message, _ = ranks[1]["failure"]
    assert (kind, message) == ("RuntimeError", "injected failure on rank 1")  # the failing rank's own error
    kind, message, seconds = ranks[0]["failure"]
    assert kind == "DistributedError"
    assert message.startswith("rank 0: stopped because rank 1 failed with RuntimeError: injected failure on rank 1")
    assert seconds < 15, f"rank 0 needed {seconds:.1f} s to stop (process-group timeout 20 s)"


# ------------------------------------------------------------------------------------------- no processes needed

def test_rank_slices_of_the_data_and_augmentation_make_up_the_global_batch():
    whole = EpochBatchSampler(100, 12, seed=3, start=5)
    parts = [EpochBatchSampler(100, 12, seed=3, start=5, rank=r, world_size=3) for r in range(3)]
    for _, batch, *shards in zip(range(12), whole, *parts):  # crosses an epoch boundary (8 batches per epoch)
        assert [len(s) for s in shards] == [4, 4, 4] and sum(shards, []) == batch
    images = torch.randn(12, 3, 8, 8)
    for flip in (True, False):
        reference = random_crop_flip(images, torch.Generator().manual_seed(7), padding=4, flip=flip)
        for start in (0, 4, 8):
            got = random_crop_flip(images[start:start + 4], torch.Generator().manual_seed(7), padding=4, flip=flip,
                                   batch_slice=(start, 12))
            assert torch.equal(got, reference[start:start + 4]), (flip, start)
    with pytest.raises(ValueError, match="not divisible by the world size 5"):
        EpochBatchSampler(100, 12, seed=0, rank=0, world_size=5)


def test_eval_shards_cover_every_example_once():
    ds = build_dataset("dsprites_shape", split="val", image_size=8, num_examples=45)
    for world in (1, 2, 4):
        seen, sizes = [], []
        for rank in range(world):
            own, shared = eval_loaders(ds, 16, rank=rank, world_size=world)
            sizes.append(len(own.dataset))
            seen += list(own.dataset.indices) if world > 1 else list(range(len(ds)))
        assert len(set(sizes)) == 1  # equal work on every rank
        if shared is not None:
            seen += list(shared.dataset.indices)
        assert sorted(seen) == list(range(len(ds))), world


def test_launch_errors_are_named(tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    base = ["train", "--preset", "test", "--out", str(tmp_path / "run")]
    assert dispatcher.main(base + ["--distributed"]) == 1
    assert "needs the environment torchrun sets" in capsys.readouterr().err
    assert dispatcher.main(base + ["--ep-size", "2"]) == 1
    assert "--ep-size: only with --distributed" in capsys.readouterr().err
    assert dispatcher.main(["train", "--preset", "test", "--distributed"]) == 1
    assert "--distributed needs --out DIR" in capsys.readouterr().err
    config = apply_overrides(get_preset("test"), ["data.batch_size=10", "accum_steps=5"])
    with pytest.raises(ValueError, match=r"batch_size=10 \(the global batch\) is not divisible by world size 4 x "
                                         r"accum_steps=5"):
        check_batch(config, DistributedContext(rank=0, world_size=4))


def test_failure_explanations_without_a_process_group():
    ctx = DistributedContext(rank=0, world_size=2, timeout_s=7.0)  # no group, hence no store to read notes from
    own = ValueError("bad example")
    assert explain_failure(own, ctx) is own  # this rank's own error goes up as it is
    broken = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:2345")
    assert is_collective_failure(broken) and not is_collective_failure(own)
    err = explain_failure(broken, ctx)
    assert isinstance(err, DistributedError)
    assert str(err).startswith("rank 0: a collective failed (process-group timeout 7.0 s): [gloo/transport")
    assert "No rank reported an error of its own" in str(err)
