"""benchmarks/sweep_gpu.py on a CPU at a tiny size: the code path a GPU runs, against train()."""

from __future__ import annotations

import math

import pytest
import torch

from lkstn.experiments import classification as cl
from lkstn.experiments.mnist import MNIST
from lkstn.learned.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stacked_seeds_of_two_rows_follow_separate_training(load_benchmark) -> None:
    bench = load_benchmark("sweep_gpu")
    data = bench.synthetic(200, torch.device("cpu"))
    seeds = [0, 1]
    cpu = torch.device("cpu")
    for row in ("STN(a)", "IC-STN-2(a)"):
        sweep = bench.RowSweep(row, seeds, cpu, graph=True)  # graph: ignored off CUDA
        for step in range(2):
            sweep.step(*bench.draw(data, seeds, step, bench.PAPER.batch_size))
        for i, seed in enumerate(seeds):
            alone = cl.build_model(MNIST, MNIST.row(row), torch.Generator().manual_seed(seed))
            before = {k: v.clone() for k, v in alone.named_parameters()}
            config = TrainConfig(
                n_steps=2, sigma=cl.SIGMA, optimizer="sgd", seed=seed, progress=False,
                lr_predictor=bench.PAPER.lr_predictor, lr_classifier=bench.PAPER.lr_classifier,
                fast_conv=False, workers=1, n_test=10,
            )  # fmt: skip
            train(alone, config, data)
            for name, p in alone.named_parameters():
                moved = float((p.detach() - before[name]).abs().max())
                # float32; vmap runs the convolutions grouped (another summation order): the
                # two agree to float32 rounding of the updates, far below what they moved
                assert torch.allclose(sweep.params[name][i], p, rtol=1e-4, atol=1e-7), name
                if name.endswith("weight") and "classifier" in name:
                    assert moved > 1e-5  # the classifier trained: the check is not vacuous


def test_the_script_runs_end_to_end_on_a_cpu(tmp_path, load_benchmark) -> None:
    bench = load_benchmark("sweep_gpu")
    argv = ["--device", "cpu", "--synthetic", "120", "--steps", "2", "--seeds", "2",
            "--rows", "c-STN-2(a)", "--out", str(tmp_path / "r.json")]  # fmt: skip
    result = bench.main(argv)
    errors = result["rows"]["c-STN-2(a)"]["test_error_percent"]
    assert len(errors) == 2 and all(0 <= e <= 100 for e in errors)
    assert all(math.isfinite(v) for v in result["rows"]["c-STN-2(a)"]["final_loss"])
    assert (tmp_path / "r.json").exists() and result["cuda_graph"] is False
