"""MNIST/GTSRB experiments ([LL17] Tables 2-3): model zoo, row -> model mapping, quick runs, report.

The quick runs train a few steps on tiny synthetic IDX / npz files written into ``tmp_path`` (the
real data are never read) and check the outputs: per-row JSON, the Markdown table with the
paper's column, the figures, resume, and the one-line error when the data are missing.
"""

from __future__ import annotations

import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch

from lkstn.cli import main
from lkstn.experiments import classification as cl
from lkstn.experiments.classification import command, training
from lkstn.experiments.gtsrb import GTSRB
from lkstn.experiments.mnist import MNIST
from lkstn.learned.checkpoint import load_checkpoint
from lkstn.learned.predictors import count_parameters
from lkstn.learned.stn import CSTN, ICSTN, STN
from lkstn.warps import Homography

EXPERIMENTS = {"mnist": MNIST, "gtsrb": GTSRB}
ALL_ROWS = [(name, row) for name, exp in EXPERIMENTS.items() for row in exp.rows]


def model(exp, name, seed=0):
    return cl.build_model(exp, exp.row(name), torch.Generator().manual_seed(seed))


# -- model zoo --------------------------------------------------------------------------------


@pytest.mark.parametrize(("exp_name", "row"), ALL_ROWS, ids=[r.name for _, r in ALL_ROWS])
def test_capacity_of_every_row_is_the_tables(exp_name, row):
    exp = EXPERIMENTS[exp_name]
    net = cl.build_model(exp, row, torch.Generator().manual_seed(0))
    # [LL17] Table 2/3 "Capacity" column, e.g. 39,048 for IC-STN-4(a), 197,343 for IC-STN-4
    assert count_parameters(net) == exp.capacity(row.name) == row.paper_capacity


def _zoom_bias(predictor, zoom):
    """Make a predictor output the homography 'scale by zoom about the centre', whatever it sees."""
    last = [m for m in predictor.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([zoom - 1, 0, 0, 0, zoom - 1, 0, 0, 0]))


def _aligner_with_zoom(exp, name, zoom):
    net = model(exp, name)
    aligner = net.aligner
    for pred in [aligner.predictor] if isinstance(aligner, ICSTN) else aligner.predictors:
        _zoom_bias(pred, zoom)
    return aligner.eval()


def test_stn_resamples_the_crop_and_cstn_composes_warps():
    # a white image; the start zooms in by 2 (the crop is the central half) and every predictor
    # zooms out by 1.5: the c-STN reads the image at 2 * 1.5 = 0.75 of the frame (all white), the
    # STN only has its crop, so a frame of 1 - 1/1.5^2 = 56 % of its output is black
    image = torch.ones(1, 1, 28, 28)
    p_init = torch.tensor([[-0.5, 0, 0, 0, -0.5, 0, 0, 0]])
    with torch.no_grad():
        stn = _aligner_with_zoom(MNIST, "STN(a)", 1.5)(image, p_init)
        cstn = _aligner_with_zoom(MNIST, "c-STN-1(a)", 1.5)(image, p_init)
    assert type(model(MNIST, "STN(a)").aligner) is STN
    black = (stn.image < 1e-6).double().mean().item()
    assert abs(black - (1 - 1 / 1.5**2)) < 0.1  # grid of 28 px: ~2 px of fringe
    assert cstn.image.min().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(cstn.p, torch.tensor([[-0.25, 0, 0, 0, -0.25, 0, 0, 0]]))


@pytest.mark.parametrize("name", ["IC-STN-2(a)", "IC-STN-4(a)", "IC-STN-4(b)"])
def test_icstn_rows_reuse_one_predictor(name):
    exp, row = MNIST, MNIST.row(name)
    aligner = model(exp, name).aligner
    assert type(aligner) is ICSTN and aligner.n_warps == row.n_warps
    assert count_parameters(aligner) == count_parameters(exp.predictor(row.predictor))
    # the one predictor, applied n_warps times: p = M(dp)^n M(p_init), [LL17] eq. (10)
    zoom = _aligner_with_zoom(exp, name, 0.9)
    with torch.no_grad():
        p = zoom(torch.rand(2, 1, 28, 28), torch.zeros(2, 8)).p
    expected = 0.9**row.n_warps - 1
    torch.testing.assert_close(p[:, [0, 4]], torch.full((2, 2), expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "n"), [("c-STN-1(a)", 1), ("c-STN-2(a)", 2), ("c-STN-4(a)", 4)])
def test_cstn_rows_have_distinct_predictors(name, n):
    aligner = model(MNIST, name).aligner
    assert type(aligner) is CSTN and aligner.n_warps == n
    params = {id(p) for p in aligner.parameters()}
    assert len(params) == sum(len(list(f.parameters())) for f in aligner.predictors)


def test_cnn_rows_see_the_perturbed_input_only():
    for exp, name in ((MNIST, "CNN(a)"), (MNIST, "CNN(b)"), (GTSRB, "CNN")):
        net = model(exp, name)
        assert count_parameters(net.aligner) == 0
        h, w = exp.template_shape
        image = torch.rand(3, 3 if exp is GTSRB else 1, h, w)
        p = torch.tensor([[0.1, 0, 0.2, 0, -0.1, 0, 0, 0]]).expand(3, 8)
        sampler = net.aligner.sampler
        torch.testing.assert_close(
            net.aligner(image, p).image, sampler.sample(image, sampler.matrix(p))
        )


# -- recipes ----------------------------------------------------------------------------------


def test_paper_recipes_are_the_papers():
    for exp, lrs in ((MNIST, (1e-4, 1e-2)), (GTSRB, (1e-5, 1e-3))):  # [LL17] Secs. 5.2, 5.3
        r = exp.recipes["paper"]
        assert (r.optimizer, r.lr_predictor, r.lr_classifier) == ("sgd", *lrs)
        assert (r.n_steps, r.batch_size, r.schedule) == (200_000, 100, "constant")
    with pytest.raises(ValueError, match="schedule"):
        cl.Recipe("x", "sgd", 1e-3, 1e-3, 10, schedule="cosine")


def test_cosine_schedule_follows_adams_step_count():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": 0.1}])
    recipe = cl.Recipe("fast", "adam", 0.1, 0.1, n_steps=8, schedule="cosine")
    lrs = []
    with cl.cosine_schedule(recipe, 8):
        for _ in range(5):
            opt.zero_grad()
            net(torch.ones(1, 2)).sum().backward()
            opt.step()
            lrs.append(opt.param_groups[0]["lr"])
    expected = [0.05 * (1 + math.cos(math.pi * t / 8)) for t in range(5)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    opt.step()  # outside the context the lr is left alone
    assert opt.param_groups[0]["lr"] == lrs[-1]


# -- quick runs on tiny synthetic data --------------------------------------------------------


def _idx(path, array):
    head = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape)
    path.write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))


def _digits(n, rng):
    """Digit-like images: a bright stroke whose position and slant depend on the label."""
    labels = rng.integers(0, 10, n)
    images = np.zeros((n, 28, 28), np.uint8)
    for i, c in enumerate(labels):
        images[i, 6:22, 4 + 2 * c : 6 + 2 * c] = 255
    return images, labels


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 30)):
        images, labels = _digits(n, rng)
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def _quick(exp_name, root, out, rows, *extra):
    argv = ["reproduce", exp_name, "--data", str(root), "--quick", "--rows", *rows,
            "--iters", "4", "--eval-every", "2", "--out", str(out), *extra]  # fmt: skip
    return main(argv)


def _figure_ok(path):
    import matplotlib.image

    assert path.stat().st_size > 5000
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels[..., :3].std() > 0.05


def test_quick_mnist_writes_table_json_and_figures(mnist_root, tmp_path):
    rows = ["CNN(a)", "IC-STN-2(a)"]
    assert _quick("mnist", mnist_root, tmp_path, rows) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["table"] == "Table 2" and report["sigma_px"] == 3.5
    assert [r["row"] for r in report["rows"]] == rows
    for r in report["rows"]:
        assert r["iterations"] == 4 and r["finished"] and len(r["curve"]) == 2
        assert 0.0 <= r["test_error"] <= 100.0 and r["elapsed_s"] > 0
        assert r["paper"]["test_error"] == MNIST.row(r["row"]).paper_error
        assert r["capacity"] == r["paper"]["capacity"]
        assert r["run"]["data"]["n_test"] == 30 and r["run"]["machine"]["cpu_count"] >= 1
        assert r["recipe"]["name"] == "paper"
    table = (tmp_path / "table.md").read_text()
    assert "Test error, paper" in table and "| IC-STN-2(a) | 1.905 % |" in table
    assert "| CNN(a) | 6.597 % |" in table and "machine:" in table
    _figure_ok(tmp_path / "figures" / "fig8_alignment.png")
    _figure_ok(tmp_path / "figures" / "fig9_mean_variance.png")
    # resume continues the same run: the first evaluations are kept, the model is the last
    assert _quick("mnist", mnist_root, tmp_path, rows[1:], "--resume", "--iters", "6") == 0
    again = json.loads((tmp_path / "ic-stn-2a" / "row.json").read_text())
    first = next(r for r in report["rows"] if r["row"] == "IC-STN-2(a)")
    assert again["iterations"] == 6 and again["curve"][:2] == first["curve"]
    assert load_checkpoint(tmp_path / "ic-stn-2a" / "checkpoint.pt").step == 6
    run = json.loads((tmp_path / "ic-stn-2a" / "run.json").read_text())
    assert run["n_steps"] == 6 and len(run["resumes"]) == 1
    # a resume with another recipe would mix two runs: refused in one line
    assert _quick("mnist", mnist_root, tmp_path, rows[1:], "--resume", "--recipe", "fast") == 2


def test_quick_fast_recipe_decays_the_learning_rate(mnist_root, tmp_path):
    assert _quick("mnist", mnist_root, tmp_path, ["IC-STN-2(b)"], "--recipe", "fast",
                  "--no-figures") == 0  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "ic-stn-2b" / "checkpoint.pt")
    base = MNIST.recipes["fast"].lr_predictor
    lr = ckpt.optimizer_state["param_groups"][0]["lr"]  # set before step 4 of 4: t = 3
    assert lr == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 3 / 4)))


def test_learning_rate_overrides_are_used_and_recorded(mnist_root, tmp_path, capsys):
    assert _quick("mnist", mnist_root, tmp_path, ["IC-STN-2(b)"], "--recipe", "fast",
                  "--lr-predictor", "1e-5", "--no-figures") == 0  # fmt: skip
    run = json.loads((tmp_path / "ic-stn-2b" / "run.json").read_text())
    recipe = run["recipe"]
    assert recipe["lr_predictor"] == 1e-5 and recipe["name"] == "fast"
    ckpt = load_checkpoint(tmp_path / "ic-stn-2b" / "checkpoint.pt")
    lr = ckpt.optimizer_state["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-5 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert _quick("mnist", mnist_root, tmp_path / "bad", ["CNN(a)"], "--lr-predictor", "-1") == 2
    assert "argument --lr-predictor: must be a finite number > 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def gtsrb_root(tmp_path_factory):
    """A 32x32 npz like the shared copy: a class-coloured square on noise."""
    root = tmp_path_factory.mktemp("gtsrb")
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 50), ("test", 20)):
        labels = rng.integers(0, 43, n)
        images = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
        images[:, 8:24, 8:24, 0] = (labels[:, None, None] * 5 + 40).astype(np.uint8)
        arrays[f"X_{split}"], arrays[f"y_{split}"] = images, labels.astype(np.uint8)
    np.savez(root / "gtsrb32.npz", **arrays)
    return root


def test_gtsrb_32px_npz_is_resampled_to_36_and_says_so(gtsrb_root):
    data, info = cl.load_data(GTSRB, gtsrb_root)
    assert tuple(data.images.shape) == (50, 3, 36, 36) and tuple(data.test_images.shape[1:]) == (
        3, 36, 36,
    )  # fmt: skip
    assert "resampled from a 32x32 copy" in info["note"]
    # the class-coloured square (rows 8..23 of 32) lands on rows 9..26 of 36: bilinear, scale 35/31
    red = data.images[:, 0].mean(0)  # (36, 36)
    assert red[18, 18] > 2 * red[2, 2]


@pytest.mark.slow
def test_quick_gtsrb_writes_table_and_rgb_figures(gtsrb_root, tmp_path):
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["STN", "IC-STN-2"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert "resampled from a 32x32 copy" in report["rows"][0]["run"]["data"]["note"]
    table = (tmp_path / "table.md").read_text()
    assert "| IC-STN-2 | 4.122 % |" in table and "36x36" in table
    _figure_ok(tmp_path / "figures" / "fig10_alignment.png")
    _figure_ok(tmp_path / "figures" / "fig11_mean_variance.png")


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    assert _quick("mnist", tmp_path, tmp_path / "out", ["CNN(a)"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MNIST" in err and "LKSTN_DATA" in err


def test_unknown_row_is_refused():
    assert main(["reproduce", "mnist", "--rows", "IC-STN-8(a)"]) == 2


# -- report -----------------------------------------------------------------------------------


def _summary(recipe, curve):
    row = MNIST.row("IC-STN-4(a)")
    progress = [{"step": s, "elapsed_s": t, "test_error": e} for s, t, e in curve]
    return cl.row_summary(MNIST, row, MNIST.recipes[recipe], progress)


def test_time_to_accuracy_compares_at_the_same_wall_time():
    fast = _summary("fast", [(1000, 100.0, 3.0), (2000, 200.0, 1.1)])
    paper = _summary("paper", [(1000, 90.0, 9.0), (2000, 195.0, 5.0), (3000, 300.0, 1.0)])
    assert fast["reached_paper_error"] == {"step": 2000, "elapsed_s": 200.0}  # 1.1 <= 1.23
    assert paper["reached_paper_error"] == {"step": 3000, "elapsed_s": 300.0}
    lines = cl.time_to_accuracy([fast], [paper])
    assert "| IC-STN-4(a) | fast | 2000 | 3.3 min | 1.100 % | step 2000, 3.3 min |" in lines
    # the paper recipe is shown at its last evaluation within the fast run's 200 s: step 2000
    assert "| IC-STN-4(a) | paper | 2000 | 3.2 min | 5.000 % | step 3000, 5.0 min |" in lines


def test_a_diverging_row_is_recorded_and_the_next_row_trains(mnist_root, tmp_path, monkeypatch):
    absurd = cl.Recipe("paper", "sgd", lr_predictor=1e12, lr_classifier=1e12, n_steps=10)
    monkeypatch.setitem(MNIST.recipes, "paper", absurd)
    rows = ["CNN(b)", "STN(b)"]
    assert _quick("mnist", mnist_root, tmp_path, rows, "--no-figures") == 0
    run = json.loads((tmp_path / "cnnb" / "run.json").read_text())
    assert "loss is nan" in run["diverged"]
    table = (tmp_path / "table.md").read_text()
    assert "| CNN(b) | 19.065 % | - |" in table and "(diverged)" in table
    assert json.loads((tmp_path / "stnb" / "row.json").read_text())["iterations"] == 4


def test_authors_frame_samples_the_box_and_its_surroundings(gtsrb_root):
    # traffic-sign/options.py of the authors: 50x50 images, the template frame their central box
    data, info = cl.load_data(GTSRB, gtsrb_root, frame="authors")
    assert data.images.shape[1:] == (3, 50, 50) and data.test_images.shape[1:] == (3, 50, 50)
    assert info["frame"] == "authors" and "box [7.0, 7.0, 43.0, 43.0] of 50x50" in info["note"]
    own, _ = cl.load_data(GTSRB, gtsrb_root)
    assert own.frame is None and own.images.shape[1:] == (3, 36, 36)
    # with no perturbation the start is the box itself: the samples are the box's pixels
    from lkstn.experiments.problems import box_warp
    from lkstn.learned.streams import ClassificationData
    from lkstn.sampling import warp_image

    box = ClassificationData(
        data.images,
        data.labels,
        data.test_images,
        data.test_labels,
        torch.as_tensor(box_warp(Homography(), (7, 7, 42, 42), (50, 50))),
    )
    batch = box.batch(Homography(), (36, 36), 0.0, 4, torch.Generator().manual_seed(0))
    crops = warp_image(batch.images, Homography(), batch.p_init, (36, 36))
    torch.testing.assert_close(crops, batch.images[..., 7:43, 7:43], atol=1e-5, rtol=0)
    # a perturbed start stays a perturbation of the box, drawn in the template frame
    test = data.test_set(Homography(), (36, 36), 3.5, 100, 0)[0].p_init
    delta = own.test_set(Homography(), (36, 36), 3.5, 100, 0)[0].p_init
    frame = data.frame.to(delta.dtype).expand_as(delta)
    torch.testing.assert_close(test, Homography().compose(frame, delta))
    with pytest.raises(ValueError, match="frame"):
        cl.load_data(MNIST, gtsrb_root, frame="authors")


def test_quick_gtsrb_with_the_authors_frame(gtsrb_root, tmp_path, capsys):
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["IC-STN-2"], "--frame", "authors") == 0
    run = json.loads((tmp_path / "ic-stn-2" / "run.json").read_text())
    assert run["frame"] == "authors" and run["data"]["frame"] == "authors"
    _figure_ok(tmp_path / "figures" / "fig10_alignment.png")
    # a resume with the other frame would mix two runs: refused in one line
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["IC-STN-2"], "--resume") == 2
    assert 'frame: run "authors", now "own"' in capsys.readouterr().err
    # the report finds the frame in run.json
    args = ["reproduce", "gtsrb", "--data", str(gtsrb_root), "--report-only", "--rows",
            "IC-STN-2", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    assert main(["reproduce", "mnist", "--frame", "authors"]) == 2  # MNIST has no --frame


def test_standardize_gives_each_image_and_channel_zero_mean_unit_variance(gtsrb_root):
    # the authors' traffic-sign code: (image - mean) / std over each image's height and width
    raw, _ = cl.load_data(GTSRB, gtsrb_root)
    data, info = cl.load_data(GTSRB, gtsrb_root, standardize=True)
    assert info["standardize"] and "standardised per channel" in info["note"]
    for images, ref in ((data.images, raw.images), (data.test_images, raw.test_images)):
        torch.testing.assert_close(images.mean((2, 3)), torch.zeros(images.shape[:2]), atol=1e-5,
                                   rtol=0)  # fmt: skip
        torch.testing.assert_close(images.std((2, 3), correction=0),
                                   torch.ones(images.shape[:2]), atol=1e-4, rtol=0)  # fmt: skip
        # an affine map of each channel: the standardised image is the raw one, rescaled
        d = ref - ref.mean((2, 3), keepdim=True)
        scale = (images * d).sum((2, 3)) / (d * d).sum((2, 3))
        torch.testing.assert_close(images, d * scale[..., None, None], atol=1e-4, rtol=0)
    # the authors' frame: the statistics are those of the whole 50x50 image, box and margin
    framed, _ = cl.load_data(GTSRB, gtsrb_root, frame="authors", standardize=True)
    assert framed.images.shape[1:] == (3, 50, 50)
    assert framed.images.mean((2, 3)).abs().max() < 1e-5
    assert framed.images[..., 7:43, 7:43].mean((2, 3)).abs().max() > 1e-3


def test_standardize_keeps_flat_images_finite():
    flat = torch.full((2, 3, 8, 8), 0.5)
    flat[1, 0, 0, 0] += 0.5 / 255  # below one grey level's spread: not amplified to unit variance
    before = flat.clone()
    out = cl.standardize_images(flat)
    assert torch.equal(flat, before)  # the input is not mutated
    assert torch.isfinite(out).all() and out[0].abs().max() == 0
    assert out[1].std((1, 2), correction=0).max() < 0.2


def test_quick_gtsrb_standardized_is_recorded_and_resumed_alike(
    gtsrb_root, mnist_root, tmp_path, capsys, monkeypatch
):
    # GTSRB standardises by default (the authors' traffic-sign code), MNIST does not
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["IC-STN-2"]) == 0
    run = json.loads((tmp_path / "ic-stn-2" / "run.json").read_text())
    assert run["standardize"] is True and run["data"]["standardize"] is True
    _figure_ok(tmp_path / "figures" / "fig11_mean_variance.png")
    assert _quick("mnist", mnist_root, tmp_path / "m", ["CNN(b)"], "--no-figures") == 0
    assert json.loads((tmp_path / "m" / "cnnb" / "run.json").read_text())["standardize"] is False
    # a resume on raw intensities would mix two inputs: refused in one line
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["IC-STN-2"], "--resume", "--no-standardize") == 2
    assert "standardize: run true, now false" in capsys.readouterr().err
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["IC-STN-2"], "--resume", "--standardize") == 0
    # the report reads the input back from run.json, whatever the flag says
    seen, load = [], cl.load_data
    monkeypatch.setattr(command, "load_data", lambda *a, **k: seen.append(k) or load(*a, **k))
    args = ["reproduce", "gtsrb", "--data", str(gtsrb_root), "--report-only", "--rows",
            "IC-STN-2", "--no-standardize", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0 and seen[-1]["standardize"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quick_gtsrb_runs_on_cuda_unchanged(gtsrb_root, tmp_path):
    # [issue 6] "the code must not need changes to run there (--device cuda)"
    assert _quick("gtsrb", gtsrb_root, tmp_path, ["IC-STN-2"], "--device", "cuda") == 0
    row = json.loads((tmp_path / "ic-stn-2" / "row.json").read_text())
    assert row["iterations"] == 4 and row["finished"] and 0.0 <= row["test_error"] <= 100.0
    machine = row["run"]["machine"]
    assert machine["device"] == "cuda" and machine["gpu"]
    config = load_checkpoint(tmp_path / "ic-stn-2" / "checkpoint.pt").config
    assert config["workers"] == 1  # no CPU shards on a GPU
    _figure_ok(tmp_path / "figures" / "fig10_alignment.png")


def test_skip_nonfinite_cuda_graph_tf32_reach_the_training_loop(mnist_root, tmp_path, monkeypatch):
    seen, inner = [], training.train
    monkeypatch.setattr(
        training, "train", lambda m, c, *a, **k: seen.append(c) or inner(m, c, *a, **k)
    )
    assert _quick("mnist", mnist_root, tmp_path, ["IC-STN-2(a)"], "--skip-nonfinite") == 0
    assert seen and all(c.nonfinite == "skip" for c in seen)
    row = json.loads((tmp_path / "ic-stn-2a" / "row.json").read_text())
    assert row["skipped_steps"] == []  # nothing was non-finite
    progress = (tmp_path / "ic-stn-2a" / "progress.jsonl").read_text().splitlines()
    assert all(json.loads(ln)["skipped_steps"] == [] for ln in progress)
    assert all(c.cuda_graph and not c.tf32 for c in seen)  # the defaults
    assert _quick("mnist", mnist_root, tmp_path / "stop", ["IC-STN-2(a)"], "--no-cuda-graph",
                  "--tf32") == 0  # fmt: skip
    assert seen[-1].nonfinite == "stop" and not seen[-1].cuda_graph and seen[-1].tf32


def test_a_resume_after_divergence_clears_the_mark_and_keeps_it_in_the_history(
    mnist_root, tmp_path
):
    assert _quick("mnist", mnist_root, tmp_path, ["IC-STN-2(a)"]) == 0
    path = tmp_path / "ic-stn-2a" / "run.json"
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "diverged": "loss is nan at step 3: training diverged."}))
    cl.write_report(MNIST, tmp_path)
    assert "(diverged)" in (tmp_path / "table.md").read_text()
    args = ["--resume", "--iters", "6", "--skip-nonfinite"]
    assert _quick("mnist", mnist_root, tmp_path, ["IC-STN-2(a)"], *args) == 0
    run = json.loads(path.read_text())
    assert "diverged" not in run
    assert run["resumes"][-1]["after"] == "diverged: loss is nan at step 3: training diverged."
    assert json.loads((tmp_path / "ic-stn-2a" / "row.json").read_text())["iterations"] == 6
    assert "(diverged)" not in (tmp_path / "table.md").read_text()
