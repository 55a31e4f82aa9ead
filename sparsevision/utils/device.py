"""Where to run: one reading of the `device` settings ("auto", "cpu", "cuda", "cuda:N") for the library and CLI."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device, what: str = "device") -> torch.device:
    """torch.device for `name`; "auto" is CUDA when available, else the CPU. A malformed name, or CUDA asked for
    where there is none, is a ValueError naming the setting (`what`, e.g. "--device")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}={name} but CUDA is not available here; use cpu or auto")
    return device
