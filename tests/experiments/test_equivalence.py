"""The linear-predictor equivalences of [LL17] Secs. 2-4, measured (experiments.equivalence)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from lkstn.experiments import equivalence
from lkstn.experiments.equivalence import (
    Check,
    compose_jacobian_checks,
    iclk_vs_icstn,
    markdown_table,
    ridge_vs_cstn,
    sdm_vs_iclk,
)
from lkstn.warps import Affine, Homography, Translation


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=lambda w: w.name)
def test_iclk_is_a_one_linear_layer_icstn(warp):
    row = iclk_vs_icstn(warp, n_iter=8, n_starts=4)
    assert row.measured < 1e-6  # identical trajectories, float64
    assert row.passed  # ... and IC-LK actually moved the starts (checked inside the row)


def test_sdm_first_regressor_tends_to_iclk_as_sigma_shrinks():
    rows = sdm_vs_iclk((0.4, 0.1, 0.025), n_samples=500)
    gaps = [r.measured for r in rows]
    # measured (2026-11, M=500): ~[0.32, 0.13, 0.07]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.1
    assert all(r.passed for r in rows)


def test_closed_form_ridge_is_a_cstn1_trained_by_gradient_descent():
    """Translation: composition is additive, so the L2 loss on p_out is SDM's ridge objective."""
    row = ridge_vs_cstn(Translation(), h=12, n_samples=300)
    assert row.passed and row.measured < 1e-3  # measured ~1e-7
    # affine: the loss on p_in o dp^-1 weighs the parameters differently -> another predictor
    gap = ridge_vs_cstn(Affine(), h=12, n_samples=300)
    assert gap.passed is None and gap.threshold is None
    assert gap.measured > 1e-2  # measured ~0.5


def test_eq11_closed_form_matches_autograd_and_the_printed_form_does_not():
    rows = compose_jacobian_checks(seed=1, n=4)
    checked = [r for r in rows if r.threshold is not None]
    assert len(checked) == 2 and all(r.passed and r.measured < 1e-10 for r in checked)
    (printed,) = [r for r in rows if r.threshold is None]
    assert printed.measured > 1e-2  # the printed eq. (11) adds d p_out / d dp - I


def test_table_and_exit_code_report_a_failing_check(tmp_path, monkeypatch):
    rows = [
        Check("good", 1e-9, 1e-6, True),
        Check("bad", 0.5, 1e-3, False),
        Check("info", 0.3, None, None),
    ]
    table = markdown_table(rows)
    assert "**NO**" in table and table.count("\n") == 4 and "| info | 0.3 | — | — |" in table
    monkeypatch.setattr(equivalence, "run_checks", lambda quick: rows)
    code = equivalence.run(argparse.Namespace(quick=True, out=str(tmp_path)))
    record = json.loads((tmp_path / "equivalence.json").read_text())
    assert code == 1 and [c["passed"] for c in record["checks"]] == [True, False, None]
    monkeypatch.setattr(equivalence, "run_checks", lambda quick: [rows[0], rows[2]])
    assert equivalence.run(argparse.Namespace(quick=True, out=str(tmp_path))) == 0
    assert np.isclose(
        json.loads((tmp_path / "equivalence.json").read_text())["checks"][0]["measured"], 1e-9
    )


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids the per-op threading overhead on a loaded 2-core machine."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
