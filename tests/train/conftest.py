"""Shared helpers: the "test" preset pointed at a temporary run directory."""
import dataclasses

import pytest

from sparsevision.train import apply_overrides, get_preset


@pytest.fixture
def tiny_config(tmp_path):
    def make(name="run", sets=(), **changes):
        config = apply_overrides(get_preset("test"), list(sets))
        return dataclasses.replace(config, out_dir=str(tmp_path / name), **changes)

    return make
