"""Shared fixtures."""

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config):
    """The CPU kernels chosen by measurement (lkstn.learned.accel.kernels) are kept for this test
    session in a file of its own, shared by its subprocesses, not in the user's cache."""
    folder = Path(tempfile.mkdtemp(prefix="lkstn-kernels-"))
    os.environ.setdefault("LKSTN_KERNEL_CACHE", str(folder / "kernels.json"))


@pytest.fixture
def one_torch_thread():
    """Small tensors: one thread is fastest, and immune to other load on a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def load_benchmark():
    """A script of ``benchmarks/`` loaded as a module: ``load_benchmark("registration")``."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        path = folder / f"{name}.py"
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
