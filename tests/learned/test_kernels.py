"""The kernel chooser keeps the fastest candidate, by a fake clock: no real timing here."""

from __future__ import annotations

import json

import pytest

from lkstn.learned.accel import kernels
from lkstn.learned.accel.kernels import (
    choose,
    clear_kernel_choices,
    fastest,
    kernel_choices,
    pin_kernels,
)


class FakeClock:
    """A clock that only the candidates move: each call of a candidate costs its scripted time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def candidate(self, name: str, costs: list[float]):
        """A candidate whose k-th timed call costs ``costs[k]`` (its untimed warm-up: 100 s)."""
        remaining = [100.0, *costs]

        def run() -> None:
            self.calls.append(name)
            self.now += remaining.pop(0)

        return run


@pytest.fixture(autouse=True)
def _fresh_choices():
    clear_kernel_choices()
    yield
    clear_kernel_choices()


def test_fastest_keeps_the_smallest_median_despite_an_outlier() -> None:
    clock = FakeClock()
    candidates = {
        "steady": clock.candidate("steady", [2.0, 2.0, 2.0, 2.0, 2.0]),
        "quick": clock.candidate("quick", [1.0, 9.0, 1.0, 1.0, 1.0]),  # one round under load
    }
    assert fastest(candidates, timer=clock) == "quick"  # median 1 < 2; the mean would be 2.6
    # warm-up in order, then interleaved rounds in alternating order
    assert clock.calls[:2] == ["steady", "quick"]
    assert clock.calls[2:6] == ["steady", "quick", "quick", "steady"]


def test_fastest_times_each_candidate_after_warm_runs_of_its_own() -> None:
    # "spinner" leaves the machine busy, so that whatever runs right after it costs 5 more;
    # "quick" costs 1 in a loop of its own. Alternating rounds put quick after spinner every
    # other round: median 6 without warm runs, 1 with one warm run before each timed one.
    clock, after = [0.0], ["none"]

    def run(name: str, cost: float):
        def go() -> None:
            clock[0] += cost + (5.0 if after[0] == "spinner" and name != "spinner" else 0.0)
            after[0] = name

        return go

    candidates = {"spinner": run("spinner", 3.0), "quick": run("quick", 1.0)}
    assert fastest(candidates, repeats=4, timer=lambda: clock[0]) == "spinner"
    assert fastest(candidates, repeats=4, timer=lambda: clock[0], warm=1) == "quick"


def test_fastest_breaks_ties_by_order_and_drops_candidates_that_raise() -> None:
    clock = FakeClock()
    tie = {
        "first": clock.candidate("first", [1.0] * 3),
        "second": clock.candidate("second", [1.0] * 3),
    }
    assert fastest(tie, repeats=3, timer=clock) == "first"

    def broken() -> None:
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    clock = FakeClock()
    candidates = {"broken": broken, "slow": clock.candidate("slow", [5.0] * 5)}
    assert fastest(candidates, timer=clock) == "slow"
    with pytest.raises(ValueError, match="no candidate ran"):
        fastest({"broken": broken})
    with pytest.raises(ValueError, match="repeats"):
        fastest(candidates, repeats=0)


def test_choose_measures_once_per_key_records_and_obeys_pins() -> None:
    clock = FakeClock()
    candidates = {"a": clock.candidate("a", [3.0] * 5), "b": clock.candidate("b", [2.0] * 5)}
    assert choose("conv2d forward x=(2,)", candidates, timer=clock) == "b"
    n_calls = len(clock.calls)
    assert choose("conv2d forward x=(2,)", candidates, timer=clock) == "b"
    assert len(clock.calls) == n_calls  # cached: not measured again
    assert kernel_choices() == {"conv2d forward x=(2,)": "b"}

    pin_kernels({"conv2d forward x=(3,)": "a"})
    assert choose("conv2d forward x=(3,)", candidates, timer=clock) == "a"
    assert len(clock.calls) == n_calls  # a pinned choice is not measured
    clear_kernel_choices()
    assert kernel_choices() == {}


def test_a_composite_choice_lets_its_candidates_choose_in_other_threads() -> None:
    # a candidate that waits for a choice made in another thread (a sharded training step):
    # measured without the lock, so it finishes instead of waiting forever
    from concurrent.futures import ThreadPoolExecutor

    clock = FakeClock()
    inner = {"x": clock.candidate("x", [1.0] * 6)}
    pool = ThreadPoolExecutor(1)

    def step(cost: float):
        def run():
            pool.submit(choose, "inner", inner, timer=clock).result(timeout=10)
            clock.now += cost

        return run

    outer = {"shards": step(1.0), "whole": step(2.0)}
    assert choose("train step", outer, timer=clock, composite=True) == "shards"
    assert kernel_choices() == {"inner": "x", "train step": "shards"}
    pin_kernels({"train step": "whole"})
    assert choose("train step", outer, timer=clock, composite=True) == "whole"
    pool.shutdown()
    clear_kernel_choices()


def test_thread_key_names_the_thread_count() -> None:
    import torch

    assert kernels.thread_key("conv2d", "x=(1,)").endswith(f"threads={torch.get_num_threads()}")


def test_a_choice_is_measured_once_per_machine_then_read_from_the_file(tmp_path, monkeypatch):
    """Two processes on one machine compute with the same kernels (bit-identical runs): the
    second reads the first's choice from the file instead of timing again."""
    path = tmp_path / "kernels.json"
    monkeypatch.setenv(kernels.CACHE_ENV, str(path))
    clear_kernel_choices()
    clock = FakeClock()
    candidates = {"a": clock.candidate("a", [3.0] * 5), "b": clock.candidate("b", [2.0] * 5)}
    assert choose("conv2d forward x=(4,)", candidates, timer=clock) == "b"
    stored = json.loads(path.read_text())
    assert [list(v.items()) for v in stored.values()] == [[("conv2d forward x=(4,)", "b")]]

    clear_kernel_choices()  # as a new process would start
    slower_b = FakeClock()
    flipped = {"a": slower_b.candidate("a", [1.0] * 5), "b": slower_b.candidate("b", [9.0] * 5)}
    assert choose("conv2d forward x=(4,)", flipped, timer=slower_b) == "b"  # the stored choice
    assert slower_b.calls == []  # nothing timed

    path.write_text('{"torn": ')  # a torn or foreign file: measured again, and rewritten
    clear_kernel_choices()
    assert choose("conv2d forward x=(4,)", flipped, timer=slower_b) == "a"
    assert "conv2d forward x=(4,)" in next(iter(json.loads(path.read_text()).values()))


def test_off_keeps_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # where the default file would go
    monkeypatch.setenv(kernels.CACHE_ENV, "off")
    clear_kernel_choices()
    assert kernels.cache_path() is None
    clock = FakeClock()
    choose("pool x=(1,)", {"only": clock.candidate("only", [1.0] * 5)}, timer=clock)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.delenv(kernels.CACHE_ENV)
    assert kernels.cache_path() == tmp_path / "lkstn" / "kernels.json"
