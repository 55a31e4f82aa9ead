import contextlib
import dataclasses

import pytest
import torch

from sparsevision.train import get_preset, train


@contextlib.contextmanager
def one_thread():
    # Models of ~20k parameters: each op is tiny, so thread hand-offs cost more than they save, many times over
    # on a busy 2-core CI machine. Restored afterwards for the rest of the suite.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _one_thread_per_module():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """A vit_tiny_test briefly pre-trained on digits (~50% val accuracy): a run directory with a checkpoint."""
    base = get_preset("test")
    config = dataclasses.replace(base, out_dir=str(tmp_path_factory.mktemp("pretrain") / "run"), steps=60,
                                 eval_every=0, checkpoint_every=0,
                                 data=dataclasses.replace(base.data, batch_size=64))
    with one_thread():
        train(config, progress=False)
    return config.out_dir
