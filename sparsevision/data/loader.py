"""Deterministic DataLoaders and whole-dataset tensors.

Every dataset here is a pure function of its index, so a loader is reproducible once its shuffling is: the order
comes from a torch.Generator seeded by `seed`, and successive epochs draw successive permutations from it.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader whose batch order depends only on `seed` (and the epoch), not on global RNG state."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    if drop_last and len(ds) < batch_size:
        raise ValueError(f"drop_last=True with batch_size={batch_size} > {len(ds)} examples would yield no batch")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                      generator=generator, persistent_workers=False)


def materialize(ds: Dataset, max_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [N, 3, S, S] float32, labels [N] int64) of the first min(len, max_examples) examples."""
    n = len(ds) if max_examples is None else min(len(ds), int(max_examples))
    if n == 0:
        raise ValueError("cannot materialize an empty dataset")
    first, _ = ds[0]
    images = torch.empty((n, *first.shape), dtype=first.dtype)
    labels = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        images[i], labels[i] = ds[i]
    return images, labels
