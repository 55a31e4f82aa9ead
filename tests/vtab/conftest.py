"""One intra-op thread for these tests: the tiny test models gain nothing from more, and on a loaded 2-core machine
oversubscribed threads made the suite several times slower."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
