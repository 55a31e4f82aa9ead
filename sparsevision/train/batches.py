"""The training data order, reproducible from (seed, epoch) alone, so a resumed run sees the same batches.

Epoch e is the permutation `np.random.default_rng([seed, e]).permutation(n)` of the training set, cut into
`n // batch_size` full batches (the remainder is dropped, as big_vision's `drop_remainder`); optimiser step s
takes batch s of this endless sequence. A resume at step s therefore only needs s.

Under data parallelism `batch_size` is still the global batch: rank r of W takes the r-th of W equal consecutive
slices of every global batch (and its augmentation draws), so W ranks see exactly the examples of a one-process
run, step by step. Evaluation splits a dataset into W equal consecutive shards; the few examples left over are
evaluated by every rank (the MoE all-to-all needs equal batches on all ranks) and counted once.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def rank_slice(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s share of a global batch of `batch_size` examples."""
    if batch_size % world_size:
        raise ValueError(f"data.batch_size={batch_size} (the global batch) is not divisible by the world size "
                         f"{world_size}; every rank must get the same number of examples")
    local = batch_size // world_size
    return rank * local, (rank + 1) * local


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches of indices, starting at global batch `start` (= the optimiser step to run next); with
    `world_size` > 1, this rank's slice of each global batch."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        if num_examples < batch_size:
            raise ValueError(f"the training set has {num_examples} examples, fewer than one batch of {batch_size}; "
                             f"lower data.batch_size")
        self.num_examples, self.batch_size, self.seed, self.start = num_examples, batch_size, seed, start
        self.batches_per_epoch = num_examples // batch_size
        self.slice = rank_slice(batch_size, rank, world_size)

    def position(self, step: int) -> dict[str, int]:
        epoch, batch = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": batch, "batches_per_epoch": self.batches_per_epoch}

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        epoch, perm = None, None
        while True:
            e, b = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, epoch_permutation(self.num_examples, self.seed, e)
            first = b * self.batch_size
            yield perm[first + self.slice[0]:first + self.slice[1]].tolist()
            step += 1


def _loader_generator(seed: int) -> torch.Generator:
    # DataLoader draws its workers' base seed from this generator (from the *global* RNG without one), so passing
    # it keeps the global RNG, and with it dropout, independent of how many loaders were created.
    return torch.Generator().manual_seed(seed)


def train_loader(ds: Dataset, batch_size: int, seed: int, start_step: int, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1) -> DataLoader:
    """Batches of the global order (see the module docstring); `batch_size` is global, each rank loads its slice."""
    sampler = EpochBatchSampler(len(ds), batch_size, seed, start_step, rank, world_size)
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, generator=_loader_generator(seed),
                      pin_memory=False)


def eval_loader(ds: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      generator=_loader_generator(0))


def eval_loaders(ds: Dataset, batch_size: int, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1) -> tuple[DataLoader, DataLoader | None]:
    """(this rank's shard, the left-over examples every rank evaluates or None): shards of len(ds) // world_size
    consecutive examples, so every rank runs the same number of equally sized batches."""
    if world_size == 1:
        return eval_loader(ds, batch_size, num_workers), None
    per_rank = len(ds) // world_size
    own = Subset(ds, range(rank * per_rank, (rank + 1) * per_rank))
    left = range(world_size * per_rank, len(ds))
    shared = eval_loader(Subset(ds, left), batch_size, num_workers) if len(left) else None
    return eval_loader(own, batch_size, num_workers), shared


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (list, tuple)):
        return batch_size_of(batch[0])
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__}")


def split_batch(batch: Any, parts: int) -> list[Any]:
    """Cut every tensor of a batch into `parts` equal micro-batches along dim 0 (gradient accumulation)."""
    if parts == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        if batch.shape[0] % parts:
            raise ValueError(f"batch of {batch.shape[0]} does not split into {parts} equal micro-batches")
        return list(batch.chunk(parts))
    if isinstance(batch, (list, tuple)):
        columns = [split_batch(b, parts) for b in batch]
        return [type(batch)(col[i] for col in columns) for i in range(parts)]
    if isinstance(batch, dict):
        columns = {k: split_batch(v, parts) for k, v in batch.items()}
        return [{k: v[i] for k, v in columns.items()} for i in range(parts)]
    return [batch] * parts


def augment_batch(batch: Any, mode: str, seed: int, step: int, position: tuple[int, int] | None = None) -> Any:
    """Apply `data.augment` to the images (first item) of an (images, ...) batch, with a generator seeded by
    (seed, step) so the augmentation, like the order, is reproduced on resume.

    position: (start, global batch size) when the batch is the slice [start, start + len) of a global batch (one
    rank's share): the images get the augmentation that `sparsevision.data.random_crop_flip` gives those
    positions of the whole global batch, so the ranks together augment exactly like one process.
    """
    if mode == "none":
        return batch
    from ..data import random_crop_flip

    images, *rest = batch
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 0xA46]).generate_state(1)[0]))
    images = random_crop_flip(images, generator, padding=4, flip=(mode == "crop_flip"), batch_slice=position)
    return type(batch)([images, *rest]) if isinstance(batch, (list, tuple)) else batch
