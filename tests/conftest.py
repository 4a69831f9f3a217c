"""Shared fixtures."""

import pytest


@pytest.fixture
def one_torch_thread():
    """Small tensors: one thread is fastest, and immune to other load on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
