"""The training loop, read top to bottom like nanoGPT's `train.py`: build, (resume,) step, log, evaluate, save.

    from sparsevision.train import get_preset, train
    result = train(dataclasses.replace(get_preset("default"), out_dir="runs/digits"))

What one step computes is the objective's business (`objectives.py`); the loop only runs it over micro-batches,
clips, steps the optimiser, and keeps the run directory (config.json, metrics.jsonl, checkpoints/, curves.png).

The same loop runs data parallel under torchrun (`distributed.enabled`, `sparsevision train --distributed`): each
rank takes its slice of every global batch, DDP averages the dense gradients, MoE experts are sharded across the
ranks (`sparsevision.moe.parallel`), logged metrics are averaged over ranks, and rank 0 writes the run directory
with checkpoints in the one-process layout; `parallel.py` holds the differences.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..distributed import DistributedContext, barrier, teardown_distributed, wrap_ddp
from ..moe.parallel import clip_grad_norm_, load_full_optimizer_state_dict_
from ..utils.device import resolve_device
from . import parallel
from .batches import augment_batch, batch_size_of, eval_loaders, split_batch, to_device, train_loader
from .checkpoint import (CONFIG_FILE, MODEL_FILE, atomic_write_bytes, checkpoint_dir, latest_checkpoint,
                         load_model_weights, load_training_state, resolve_weights, save_checkpoint)
from .config import TrainConfig, config_from_dict, config_to_dict, diff_configs, validate
from .objectives import Objective, build_objective
from .optim import build_optimizer, learning_rate, set_learning_rate
from .plots import PLOT_FILE, plot_metrics
from .writer import METRICS_FILE, MetricsWriter, read_metrics


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val: dict  # last validation metrics (of the whole split, on every rank)
    test: dict  # final test metrics ({} when stopped early)
    checkpoint: Path | None
    stopped_early: bool
    rank: int = 0  # this process's rank (data parallel); rank 0 wrote the run directory


class NonFiniteLossError(RuntimeError):
    """Raised when the loss (or gradient norm) stops being finite; the last good checkpoint is left in place."""


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether fp16's GradScaler is needed)."""
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            return None, False  # CPU autocast to bf16 is slower than fp32 without AMX; ask for it with bf16
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("precision=bf16 but this GPU does not support bfloat16; use fp16 or fp32")
        return torch.bfloat16, False
    if precision == "fp16":
        if not cuda:
            raise ValueError("precision=fp16 needs CUDA (loss scaling with GradScaler); use bf16 or fp32 on CPU")
        return torch.float16, True
    raise ValueError(f"unknown precision {precision!r}; expected auto, fp32, bf16 or fp16")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict:
    """All global RNG states, as tensors and plain numbers (loadable with torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(model: torch.nn.Module, objective: Objective, loader, device: torch.device,
             autocast_dtype: torch.dtype | None = None, ctx: DistributedContext | None = None,
             shared_loader=None) -> dict[str, float]:
    """Metrics averaged over every example of `loader` (each batch's means weighted by its size).

    Data parallel (`ctx` of W > 1 ranks): `loader` is this rank's shard and `shared_loader` (optional) the
    left-over examples that every rank runs but only rank 0 counts (see `batches.eval_loaders`); the sums are
    added over the ranks, so every rank returns the metrics of the whole dataset.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    counted = ctx is None or ctx.is_main
    shared = shared_loader if shared_loader is not None else ()
    for batches, weight in ((loader, 1), (shared, 1 if counted else 0)):
        for batch in batches:
            batch = to_device(batch, device)
            with _autocast(device, autocast_dtype):
                _, metrics = objective(model, batch)
            n = batch_size_of(batch) * weight
            values = _to_floats(metrics)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * n
            count += n
    model.train(was_training)
    if ctx is not None and ctx.is_distributed:
        count, *totals = parallel.sum_over_ranks([float(count), *sums.values()], ctx)
        sums = dict(zip(sums, totals))
    if count == 0:
        raise ValueError("evaluation dataset is empty")
    return {key: value / count for key, value in sums.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _to_floats(metrics: dict) -> dict[str, float]:
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    values = dict(zip(tensors, torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).tolist())) \
        if tensors else {}
    values.update({k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)})
    return {k: values[k] for k in metrics}


def _check_run_dir(config: TrainConfig, resume: bool) -> tuple[Path, Path | None]:
    """(run directory, newest checkpoint to resume from or None); creates nothing."""
    if not config.out_dir:
        raise ValueError("out_dir is empty; set it (--out DIR) so the run has somewhere to write")
    run_dir = Path(config.out_dir)
    checkpoint = latest_checkpoint(run_dir)
    if resume and checkpoint is None:
        stopped = " (the run stopped before its first checkpoint; delete it and start again)" \
            if (run_dir / METRICS_FILE).exists() else ""
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'} to resume from{stopped}")
    if not resume and checkpoint is not None:
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if not resume and (run_dir / METRICS_FILE).exists():
        # --resume cannot help either: say what the user can do (delete it or choose another --out).
        raise ValueError(f"{run_dir} already holds a run that stopped before its first checkpoint (nothing to "
                         f"resume); delete it or choose another --out")
    return run_dir, checkpoint


def train(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None,
          objective: Objective | None = None, progress: bool | None = None,
          ctx: DistributedContext | None = None) -> TrainResult:
    """Train as `config` says, writing everything into `config.out_dir`.

    resume: continue from the newest checkpoint in out_dir (same losses as an uninterrupted run).
    stop_after: save a checkpoint and return after this step (on every rank), as if interrupted (jobs with a
        time limit).
    objective: overrides the config's registered objective (what a step computes; see objectives.py).
    progress: show a tqdm bar; default when stderr is a terminal.
    ctx: the process group to train in (e.g. from `sparsevision.distributed.launch_local`); by default, with
        `distributed.enabled`, the one torchrun describes (see `parallel.start`). Data parallel: every rank calls
        `train` with the same config; `data.batch_size` is the global batch, rank 0 alone writes the run
        directory, and the losses are those of one process on the same batches.
    """
    validate(config)
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after={stop_after} (--stop-after) must be >= 1")
    ctx, owned = parallel.start(config, ctx)
    try:
        result = _train(config, ctx, resume=resume, stop_after=stop_after, objective=objective, progress=progress)
    except BaseException as err:
        if ctx.is_distributed:
            replacement = parallel.explain_failure(err, ctx)
            if replacement is not err:
                raise replacement from err
        raise  # the process group is left as it is: this process is on its way out, and its peers must notice
    if owned:
        teardown_distributed(ctx)
    return result


def _train(config: TrainConfig, ctx: DistributedContext, *, resume: bool, stop_after: int | None,
           objective: Objective | None, progress: bool | None) -> TrainResult:
    from ..models import create_model

    main = ctx.is_main
    parallel.check_batch(config, ctx)
    run_dir, checkpoint = _check_run_dir(config, resume)
    barrier(ctx)  # every rank has looked at the run directory before rank 0 writes into it
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = ctx.device if ctx.is_distributed else resolve_device(config.device)
    autocast_dtype, use_scaler = resolve_precision(config.precision, device)
    objective = objective or build_objective(config)
    datasets = {split: objective.build_dataset(config, split) for split in ("train", "val", "test")}

    # The resolved config records what the model got from the data, so config.json alone rebuilds it.
    from_data = objective.model_overrides(config, datasets["train"])
    _check_model_fits_data(config, from_data)
    overrides = {**from_data, **config.model.overrides}
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, overrides=overrides))
    if checkpoint is not None and main:
        saved = json.loads((checkpoint / CONFIG_FILE).read_text())
        changed = {k: v for k, v in diff_configs(config_from_dict(saved), config).items()
                   if k != "out_dir" and not k.startswith("distributed.")}  # the launch layout is free to change
        if changed:
            print(f"resuming with changed settings: {changed}", file=sys.stderr)

    seed_everything(config.seed)
    try:
        model = create_model(config.model.name, **config.model.overrides).to(device)
    except TypeError as err:  # a misspelt model.overrides key: report it as a bad config value
        raise ValueError(f"{err} (from model.overrides={config.model.overrides})") from err
    if config.model.init_from and checkpoint is None:
        load_model_weights(model, resolve_weights(config.model.init_from), strict=True)
    model, plan = parallel.prepare_model(model, ctx, config, sync_from_rank0=checkpoint is None,
                                         uses_grad_scaler=use_scaler)
    optimizer = build_optimizer(model, config.optim)  # after sharding: it holds this rank's expert shards
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start_step = 0
    if checkpoint is not None:
        # The one-process layout on every rank; each keeps its slice of the experts (N -> M ranks).
        load_model_weights(model, checkpoint / MODEL_FILE, strict=True)
        state = load_training_state(checkpoint)
        load_full_optimizer_state_dict_(optimizer, state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        if main:
            set_rng_state(state["rng"])
        if start_step > config.steps:
            raise ValueError(f"the checkpoint in {checkpoint} is at step {start_step}, beyond steps={config.steps}")
        if stop_after is not None and stop_after <= start_step:  # it returned "step 0" having done nothing
            raise ValueError(f"stop_after={stop_after} (--stop-after) is not after the checkpoint's step "
                             f"{start_step} in {checkpoint}")
    if not main:  # dropout and router noise differ per rank; rank 0 keeps the one-process stream
        seed_everything(parallel.rank_seed(config.seed, ctx.rank, start_step))
    ddp = wrap_ddp(model, ctx)  # DDP for everything but the expert shards (the model itself in one process)
    if config.compile != "off":  # after DDP, so its bucketed all-reduces stay outside the compiled graphs
        ddp = torch.compile(ddp, backend=config.compile)
    if main:
        atomic_write_bytes(run_dir / CONFIG_FILE, json.dumps(config_to_dict(config), indent=2).encode())

    loader = train_loader(datasets["train"], config.data.batch_size, config.seed, start_step, config.data.num_workers,
                          ctx.rank, ctx.world_size)
    position = (loader.batch_sampler.slice[0], config.data.batch_size)  # this rank's share of each global batch
    batches = iter(loader)
    saved_batches = state["data"]["batches_per_epoch"] if checkpoint is not None else None
    if main and saved_batches not in (None, loader.batch_sampler.batches_per_epoch):
        print(f"note: {state['data']['batches_per_epoch']} batches per epoch when saved, "
              f"{loader.batch_sampler.batches_per_epoch} now; the data order differs from the original run",
              file=sys.stderr)
    val_loaders = eval_loaders(datasets["val"], config.data.eval_batch_size, config.data.num_workers, ctx.rank,
                               ctx.world_size)
    last_step = config.steps if stop_after is None else min(config.steps, stop_after)
    if main:
        num_params = parallel.count_parameters(model, plan)
        experts = "" if plan is None else (", experts replicated" if plan.ep_size == 1 else
                                           f", experts sharded over {plan.ep_size} ranks")
        layout = f" x {ctx.world_size} ranks (data parallel{experts})" if ctx.is_distributed else ""
        print(f"{config.model.name}: {num_params / 1e6:.2f}M params on {device}{layout} "
              f"({autocast_dtype or torch.float32}); steps {start_step}->{last_step} of {config.steps}; "
              f"run dir {run_dir}", file=sys.stderr)

    writer = MetricsWriter(run_dir, resume_step=start_step if checkpoint is not None else None) if main \
        else _NoWriter()
    bar = _progress_bar(config.steps, start_step, progress if main else False)
    say = bar.write if main else (lambda _: None)
    val_metrics: dict = {}
    window: dict[str, float] = {}
    window_steps, window_images, window_seconds = 0, 0, 0.0  # seconds of training steps only, not eval / saving
    model.train()
    try:
        for step in range(start_step + 1, last_step + 1):
            # ---- one optimiser step over accum_steps micro-batches
            step_start = time.perf_counter()
            lr = learning_rate(step - 1, config.optim, config.steps)
            set_learning_rate(optimizer, lr)
            batch = augment_batch(next(batches), config.data.augment, config.seed, step, position)
            batch = to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            step_metrics: dict[str, torch.Tensor] = {"loss": 0.0, "_total": 0.0}
            micro_batches = split_batch(batch, config.accum_steps)
            for index, micro in enumerate(micro_batches):
                # DDP all-reduces the gradients once, in the backward of the last micro-batch.
                with _no_sync(ddp, last=index == len(micro_batches) - 1):
                    with _autocast(device, autocast_dtype):
                        loss, metrics = objective(ddp, micro)
                    # Mean of micro-batch means = mean over the whole batch: accumulating k x b equals one k*b batch.
                    scaler.scale(loss / config.accum_steps).backward()
                detached = loss.detach().float()
                for key, value in {"loss": detached, **metrics, "_total": detached}.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value / config.accum_steps
            # One device sync per step, needed for the finite-loss check; the mean over ranks is the global batch's
            # (equal local batches), and every rank takes the same decisions from it.
            values = parallel.mean_over_ranks(_to_floats(step_metrics), ctx)
            total = values.pop("_total")  # the loss that was minimised, whatever the objective logs as "loss"
            if not math.isfinite(total):
                raise NonFiniteLossError(_nonfinite_message("loss", total, step, run_dir, config))
            scaler.unscale_(optimizer)
            max_norm = config.optim.grad_clip_norm or float("inf")
            grad_norm = float(clip_grad_norm_(model, max_norm, ctx))  # the global norm, the same on every rank
            if not math.isfinite(grad_norm) and not use_scaler:  # fp16's scaler skips such steps by design
                raise NonFiniteLossError(_nonfinite_message("gradient norm", grad_norm, step, run_dir, config))
            scaler.step(optimizer)
            scaler.update()
            window_seconds += time.perf_counter() - step_start

            # ---- bookkeeping
            values.update(lr=lr, grad_norm=grad_norm)
            for key, value in values.items():
                window[key] = window.get(key, 0.0) + value
            window_steps += 1
            window_images += batch_size_of(batch) * ctx.world_size
            bar.update(1)
            if step % config.log_every == 0 or step == last_step:
                record = {"step": step, "split": "train", **{k: v / window_steps for k, v in window.items()},
                          "lr": lr, "throughput": window_images / max(window_seconds, 1e-9),
                          "epoch": step / loader.batch_sampler.batches_per_epoch}
                writer.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['throughput']:.0f}")
                window, window_steps, window_images, window_seconds = {}, 0, 0, 0.0
            if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
                val_metrics = evaluate(model, objective, val_loaders[0], device, autocast_dtype, ctx, val_loaders[1])
                writer.write({"step": step, "split": "val", **val_metrics})
                say(f"step {step}: val " + " ".join(f"{k} {v:.4f}" for k, v in val_metrics.items()))
                val_loss = val_metrics.get("loss", 0.0)
                if not math.isfinite(val_loss):  # diverged weights: never save them as a checkpoint
                    raise NonFiniteLossError(_nonfinite_message("validation loss", val_loss, step, run_dir, config))
                if main and step < last_step:  # the last one is drawn on the way out
                    _plot(run_dir, config)
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == last_step:
                model_state, optimizer_state = parallel.full_state(model, optimizer, ctx)
                if main:
                    state = {"step": step, "optimizer": optimizer_state, "scaler": scaler.state_dict(),
                             "rng": rng_state(), "data": loader.batch_sampler.position(step)}
                    save_checkpoint(run_dir, step, model_state, state, config_to_dict(config),
                                    keep=config.keep_checkpoints)
                checkpoint = checkpoint_dir(run_dir, step)
        test_metrics: dict = {}
        if last_step == config.steps:
            test_loaders = eval_loaders(datasets["test"], config.data.eval_batch_size, config.data.num_workers,
                                        ctx.rank, ctx.world_size)
            test_metrics = evaluate(model, objective, test_loaders[0], device, autocast_dtype, ctx, test_loaders[1])
            writer.write({"step": config.steps, "split": "test", **test_metrics})
            say("test " + " ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))
            _train_end_hook(objective, model, plan, config, ctx, run_dir, device)
    finally:
        bar.close()
        writer.close()
        if main:
            _plot(run_dir, config)
    barrier(ctx)  # a rank returns only once rank 0 has written everything (or fails naming rank 0)
    return TrainResult(run_dir, last_step, val_metrics, test_metrics, checkpoint, last_step < config.steps,
                       ctx.rank)


def _check_model_fits_data(config: TrainConfig, from_data: dict) -> None:
    """A head or input size set in model.overrides (or recorded by the run being resumed) that the data does not
    have: too few classes fails at the first out-of-range label, too many trains silently on a wrong head."""
    def side(size):
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    for key, wanted in from_data.items():
        given = config.model.overrides.get(key)
        if given is None or (side(given) == side(wanted) if key == "img_size" else given == wanted):
            continue
        what = (f"{config.data.dataset} has {wanted} classes" if key == "num_classes"
                else f"data.image_size={config.data.image_size}")
        raise ValueError(f"model.overrides.{key}={given} does not match the data: {what} (a resumed run keeps the "
                         f"model it was built with: start a new run, or adapt it with `sparsevision transfer`)")


def _no_sync(model: torch.nn.Module, last: bool):
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: no_sync is the DDP module's
    if last or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def _train_end_hook(objective, model, plan, config: TrainConfig, ctx: DistributedContext, run_dir: Path,
                    device: torch.device) -> None:
    """`objective.on_train_end(model, run_dir)` on rank 0, with a one-process copy of an expert-parallel model
    (gathered from every rank), so the hook never has to know about ranks."""
    hook = getattr(type(objective), "on_train_end", None)  # objectives may be plain callables
    if hook is None or hook is Objective.on_train_end:
        return
    if plan is not None:
        from ..models import create_model
        from ..moe.parallel import full_state_dict

        state = full_state_dict(model)  # every rank takes part; rank 0 gets the full experts
        if not ctx.is_main:
            return
        model = create_model(config.model.name, **config.model.overrides)
        model.load_state_dict(state)
        model = model.to(device)
    if ctx.is_main:
        objective.on_train_end(model, run_dir)


class _NoWriter:
    """The metrics writer of ranks other than 0, which write nothing."""

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _nonfinite_message(what: str, value: float, step: int, run_dir: Path, config: TrainConfig) -> str:
    good = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint {good} is kept" if good else "no checkpoint had been saved yet"
    if good is not None and good.name == checkpoint_dir(run_dir, step - 1).name:
        # Saved right after the update that may have diverged: its weights gave this value.
        kept = f"the newest checkpoint {good} was saved one step earlier and may already hold the diverged weights"
    advice = "a lower optim.lr or a longer optim.warmup_steps"
    if not config.optim.grad_clip_norm:
        advice += " or optim.grad_clip_norm=1"
    return f"{what} is {value} at step {step}; training stopped without saving ({kept}). Try {advice}"


def _plot(run_dir: Path, config: TrainConfig) -> None:
    records = read_metrics(run_dir)
    if records:
        plot_metrics(records, run_dir / PLOT_FILE, title=f"{config.model.name} on {config.data.dataset}")


def _progress_bar(total: int, initial: int, progress: bool | None):
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() if progress is None else progress)
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)
