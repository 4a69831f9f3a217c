"""The planar experiment ([LL17] Sec. 5.1): tiny trainings on the cat, fixed seeds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lkstn.experiments import planar
from lkstn.experiments.convergence import fixed_starts
from lkstn.experiments.curves import error_curves
from lkstn.experiments.planar import PAPER_TABLE1, Recipe, build_model, model_name, train_model
from lkstn.experiments.problems import planar_problem

torch = pytest.importorskip("torch")

SIGMA = 5.0
TINY = Recipe(sigmas=(SIGMA,), depths=(1, 2), n_steps=200, lr=6e-5, n_stats=300, n_test=200)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids the per-op threading overhead on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """c-STN-1 and IC-STN-2 trained for 200 steps at sigma = 5 px (seed 0), and their run dirs."""
    prob = planar_problem((50, 50))
    root = tmp_path_factory.mktemp("planar")
    models = {}
    for depth in (1, 2):
        models[depth] = build_model(prob, depth, SIGMA, TINY)
        train_model(models[depth], prob, SIGMA, TINY, root / model_name(depth))
    return prob, models, root


def test_icstn2_beats_cstn1_and_keeps_improving_past_its_depth(trained):
    prob, models, _ = trained
    test = fixed_starts(prob.warp, prob.p_true, SIGMA, (50, 50), 300, seed=1)
    curves = error_curves(
        {"c-STN-1": models[1], "IC-STN-2": models[2]}, prob.image, prob.p_true, test, 4
    )
    start = curves.mean_corner_px["c-STN-1"][0]
    c1 = curves.mean_corner_px["c-STN-1"][1]  # after its one trained warp
    ic2 = curves.mean_corner_px["IC-STN-2"]
    # measured (2026-11): start 8.72 px, c-STN-1 2.87 px, IC-STN-2 0.83 px at 2, 0.17 px at 3
    assert start > 8.0 and c1 < 0.5 * start
    assert ic2[2] < 0.6 * c1  # two warps of one shared linear layer beat one
    assert ic2[3] < 0.7 * ic2[2]  # [LL17] Fig. 7: the error keeps falling past the trained depth
    p1 = curves.mean_param_l2
    assert p1["IC-STN-2"][2] < p1["c-STN-1"][1] and p1["IC-STN-2"][3] < p1["IC-STN-2"][2]


def test_finished_training_is_loaded_not_rerun(trained):
    prob, models, root = trained
    again = build_model(prob, 2, SIGMA, TINY)
    assert float(again.predictor[1].linear.weight.detach().abs().max()) == 0.0  # zero init
    train_model(again, prob, SIGMA, TINY, root / "IC-STN-2")  # all phases finished: loads them
    for a, b in zip(again.state_dict().values(), models[2].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    sessions = (root / "IC-STN-2" / "seconds.jsonl").read_text().splitlines()
    assert len(sessions) == 2 and all(json.loads(ln)["seconds"] > 0 for ln in sessions)


def test_model_is_one_linear_layer_and_its_names():
    prob = planar_problem((50, 50))
    model = build_model(prob, 3, SIGMA, replace(TINY, n_stats=50))
    learnable = [p for p in model.parameters() if p.requires_grad]
    assert [tuple(p.shape) for p in learnable] == [(6, 2500), (6,)]
    assert model.n_warps == 3 and model.update == "eq10" and model.warp == prob.warp
    assert [model_name(k) for k in (1, 2, 6)] == ["c-STN-1", "IC-STN-2", "IC-STN-6"]
    assert set(PAPER_TABLE1) == {model_name(k) for k in Recipe().depths}


def test_experiment_writes_table_figures_and_json(tmp_path):
    recipe = Recipe(
        sigmas=(2.5,),
        depths=(1, 2),
        n_steps=40,
        lr=4e-5,
        n_stats=100,
        n_test=50,
        n_curve=3,
        n_sdm=100,
    )
    lines = []
    record = planar.run_experiment(tmp_path, recipe, log=lines.append)
    for name in (
        "fig6a_boxes.png",
        "fig6b_samples.png",
        "fig7_sigma2.5.png",
        "planar.json",
        "table1.md",
    ):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "planar.json").read_text())
    row = saved["table1"]["IC-STN-2"]["2.5"]
    assert row["paper"] == PAPER_TABLE1["IC-STN-2"][2.5]  # displayed beside ours, not used
    assert (
        0 < row["param_l2"]
        and 0 < row["corner_px"] < saved["curves"]["2.5"]["mean_corner_px"]["IC-STN-2"][0]
    )
    assert set(saved["curves"]["2.5"]["mean_corner_px"]) == {
        "c-STN-1",
        "IC-STN-2",
        "LK",
        "CompositionalLK",
        "ICLK",
        "SDM-4",
    }
    assert all(len(v) == 4 for v in saved["curves"]["2.5"]["median_corner_px"].values())
    assert "0.615" in (tmp_path / "table1.md").read_text() and record["total_seconds"] > 0
    assert any("IC-STN-2" in line for line in lines)


def test_cli_rejects_bad_options(tmp_path, capsys):
    from lkstn.cli import main

    for bad in (["--threads", "0"], ["--steps", "2"], ["--steps", "many"]):
        code = main(["reproduce", "planar", *bad, "--out", str(tmp_path)])
        assert code == 2 and bad[0] in capsys.readouterr().err
    assert not any(p.suffix == ".png" for p in tmp_path.iterdir())
