"""Tests for lkstn.learned.stn: STN, c-STN, IC-STN against lkstn.warps, warp_image and IC-LK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from lkstn import ICLK, Affine, Homography, Similarity, Translation, warp_image
from lkstn.learned.predictors import mnist_classifier, mnist_predictor
from lkstn.learned.stn import CSTN, ICSTN, STN, AlignThenClassify, Transformed
from lkstn.learned.torch_warp import WarpSampler
from lkstn.perturb import perturb
from lkstn.result import Aligner
from lkstn.sampling import warped_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


WARPS = [Translation(), Similarity(), Affine(), Homography()]


class Constant(nn.Module):
    """A predictor that always outputs the same ``dp`` (and records what it saw)."""

    def __init__(self, dp) -> None:
        super().__init__()
        self.dp = nn.Parameter(torch.as_tensor(dp, dtype=torch.get_default_dtype()))
        self.seen: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(image)
        return self.dp.expand(image.shape[0], -1)


def random_p(warp, n, scale, seed):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.normal(0.0, scale, (n, warp.n_params)))


def camera(step: int = 4) -> np.ndarray:
    return skdata.camera()[::step, ::step].astype(np.float64) / 255.0


# -- the fast warp path against lkstn.warps (its sampling: tests/test_samplers.py) -------------


@pytest.mark.parametrize("warp", WARPS, ids=lambda w: w.name)
def test_sampler_matches_lkstn_warps(warp) -> None:
    S = WarpSampler(warp, (7, 9)).double()
    p, q = random_p(warp, 5, 0.1, 0), random_p(warp, 5, 0.1, 1)
    Mp, Mq = S.matrix(p), S.matrix(q)
    torch.testing.assert_close(Mp, warp.matrix(p), rtol=0, atol=1e-15)
    torch.testing.assert_close(S.params(Mp), p, rtol=0, atol=1e-15)
    torch.testing.assert_close(S.params(S.compose(Mp, Mq)), warp.compose(p, q), rtol=0, atol=1e-14)


@pytest.mark.parametrize("warp", [Affine(), Homography()], ids=lambda w: w.name)
def test_sampling_grid_gradient_in_closed_form_equals_autograd(warp) -> None:
    # the CPU grid's hand-written gradient in M against autograd through the same formula:
    # both are exact up to float64 rounding of sums over the 28 x 31 points
    sampler = WarpSampler(warp, (28, 31)).double()
    gen = torch.Generator().manual_seed(3)
    p = 0.1 * torch.randn(6, warp.n_params, generator=gen, dtype=torch.float64)
    M = sampler.matrix(p).requires_grad_()
    image = torch.rand(6, 2, 40, 35, generator=gen, dtype=torch.float64)
    g = torch.randn(6, 2, 28, 31, generator=gen, dtype=torch.float64)
    (dM,) = torch.autograd.grad(sampler.sample(image, M), M, g)
    M2 = M.detach().requires_grad_()
    grid = warped_grid(M2, sampler.grid, projective=warp.projective).permute(1, 2, 0)
    out = nn.functional.grid_sample(image, grid.reshape(6, 28, 31, 2), align_corners=True)
    (dM2,) = torch.autograd.grad(out, M2, g)
    torch.testing.assert_close(dM, dM2, rtol=1e-10, atol=1e-10 * dM2.abs().max().item())
    assert torch.autograd.gradcheck(sampler.grid_of, (M[:2].detach().requires_grad_(),))


def test_sampler_follows_dtype_and_keeps_constants_out_of_state_dict() -> None:
    S = WarpSampler(Homography(), (5, 6))
    assert S.grid.dtype == torch.float32 and S.grid.shape == (3, 30)
    assert S.double().basis.dtype == torch.float64
    assert S.state_dict() == {}


# -- identity start, shapes, contract ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["STN", "CSTN", "ICSTN"])
def test_zero_initialised_predictor_gives_the_identity_warp(kind) -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(4, 1, 40, 36, generator=gen)
    p_init = perturb(Homography(), torch.zeros(8), 2.0, (28, 28), gen, n=4)
    pred = mnist_predictor("a", generator=gen)
    model = {
        "STN": lambda: STN(pred, template_shape=(28, 28)),
        "CSTN": lambda: CSTN([pred, mnist_predictor("a2")], template_shape=(28, 28)),
        "ICSTN": lambda: ICSTN(pred, n_warps=3, template_shape=(28, 28)),
    }[kind]()
    out = model(image, p_init)
    expected = warp_image(image, Homography(), p_init, (28, 28))
    assert isinstance(out, Transformed)
    # float32: the grids are rounded differently (one matmul here); the STN resamples I(p_init)
    # once more at the identity, exact up to that rounding too
    torch.testing.assert_close(out.image, expected, rtol=0, atol=2e-5)
    n = out.history.shape[0]
    assert n == {"STN": 2, "CSTN": 3, "ICSTN": 4}[kind]
    assert torch.equal(out.history, p_init.expand(n, -1, -1)) and torch.equal(out.p, p_init)


def test_networks_satisfy_the_aligner_contract() -> None:
    model = ICSTN(mnist_predictor("b"), n_warps=2, template_shape=(28, 28))
    assert isinstance(model, Aligner)
    model.train()
    image = torch.rand(3, 1, 28, 28)
    p_init = torch.zeros(3, 8)
    p_init[1, 0] = float("nan")  # a NaN start is data: not converged, no exception
    result = model.align(image, p_init, n_iter=7)  # more recurrences than trained with
    assert result.history.shape == (8, 3, 8) and result.cost is None
    assert result.converged.tolist() == [True, False, True]
    assert not result.history.requires_grad and model.training  # mode restored


def test_align_with_a_template_reports_the_cost() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 1, 40, 40, generator=gen)
    p_true = torch.zeros(8)
    p_true[[0, 4]] = 27 / 39 - 1  # the central 28 x 28 pixels
    template = warp_image(image[:1], Homography(), p_true, (28, 28))[0]
    model = ICSTN(mnist_predictor("b"), n_warps=2, template_shape=(28, 28), template=template)
    p_init = perturb(Homography(), p_true, 1.0, (28, 28), gen, n=2)
    p_init[1, 2] += 1.0  # half of this box is outside the image
    result = model.align(image, p_init)
    expected = ((warp_image(image, Homography(), p_init, (28, 28)) - template) ** 2).mean((1, 2, 3))
    assert result.cost.shape == (3, 2)
    torch.testing.assert_close(result.cost[0], expected)
    # the predictor is zero: p never moves and the cost does not grow; the first box is inside
    # the image, over texture: converged; the second box left the image: not converged
    assert torch.equal(result.cost[0], result.cost[-1])
    assert result.converged.tolist() == [True, False]
    with pytest.raises(ValueError, match="template is constant"):
        ICSTN(mnist_predictor("b"), template_shape=(28, 28), template=torch.ones(28, 28))


def test_one_image_many_starts_broadcasts() -> None:
    model = CSTN([mnist_predictor("b")], template_shape=(28, 28))
    out = model(torch.rand(1, 1, 28, 28), torch.zeros(5, 8))
    assert out.image.shape == (5, 1, 28, 28) and out.history.shape == (2, 5, 8)
    out = model(torch.rand(5, 1, 28, 28), torch.zeros(8))
    assert out.image.shape == (5, 1, 28, 28)


def test_align_then_classify_feeds_the_final_warp_to_the_classifier() -> None:
    gen = torch.Generator().manual_seed(2)
    pred = mnist_predictor("b")
    with torch.no_grad():
        pred.layers[-1].weight.normal_(0.0, 1e-3, generator=gen)
    aligner = ICSTN(pred, n_warps=2, template_shape=(28, 28))
    model = AlignThenClassify(aligner, mnist_classifier(generator=gen))
    image, p_init = torch.rand(4, 1, 28, 28, generator=gen), torch.zeros(4, 8)
    scores = model(image, p_init)
    assert scores.shape == (4, 10)
    torch.testing.assert_close(scores, model.classifier(aligner(image, p_init).image))
    assert model.config["aligner"] == {
        "model": "ICSTN", "warp": "homography", "template_shape": [28, 28], "n_warps": 2,
        "update": "eq10",
    }  # fmt: skip


# -- composition -----------------------------------------------------------------------------


def test_eq10_composition_order_with_hand_numbers() -> None:
    # p_in: translation by 0.5 in x; dp: scale by 2. M(dp) M(p_in) = [[2, 0, 1], [0, 2, 0]]
    # (the translation is scaled: eq. (10)); M(p_in) M(dp)^-1 = [[.5, 0, .5], [0, .5, 0]].
    p_in = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.0, 0.0]])
    dp = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    image = torch.rand(1, 1, 9, 9)
    eq10 = ICSTN(Constant(dp), warp=Affine(), n_warps=1, template_shape=(9, 9))
    inv = ICSTN(Constant(dp), warp=Affine(), n_warps=1, template_shape=(9, 9), update="inverse")
    assert eq10(image, p_in).p.tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    assert inv(image, p_in).p.tolist() == [[-0.5, 0.0, 0.5, 0.0, -0.5, 0.0]]
    assert eq10.config["update"] == "eq10" and inv.config["update"] == "inverse"


def test_inverse_update_undoes_what_eq10_does_for_translations() -> None:
    # translations commute: eq10 adds dp at every recurrence, "inverse" subtracts it.
    p_in = torch.tensor([[0.1, -0.2]])
    dp = [0.05, 0.03]
    image = torch.rand(1, 1, 9, 9)
    kw = {"warp": Translation(), "n_warps": 3, "template_shape": (9, 9)}
    hist10 = ICSTN(Constant(dp), **kw).align(image, p_in).history[:, 0]
    hist_inv = ICSTN(Constant(dp), update="inverse", **kw).align(image, p_in).history[:, 0]
    k = torch.arange(4.0)[:, None]
    torch.testing.assert_close(hist10, p_in + k * torch.tensor(dp))
    torch.testing.assert_close(hist_inv, p_in - k * torch.tensor(dp))


def test_cstn_resamples_the_original_image_at_the_composed_warp() -> None:
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 1, 32, 32, generator=gen)
    f1, f2 = Constant([0.1, 0.0, 0.05, 0.0, 0.1, 0.0]), Constant([0.0, 0.1, 0.0, -0.1, 0.0, 0.1])
    model = CSTN([f1, f2], warp=Affine(), template_shape=(16, 16))
    p_init = torch.tensor([-0.4, 0.0, 0.1, 0.0, -0.4, 0.0])
    out = model(image, p_init)
    warp = Affine()
    p1 = warp.compose(f1.dp.detach(), p_init)
    p2 = warp.compose(f2.dp.detach(), p1)
    torch.testing.assert_close(out.history[1], p1.expand(2, -1))
    torch.testing.assert_close(out.p, p2.expand(2, -1))
    torch.testing.assert_close(out.image, warp_image(image, warp, out.p, (16, 16)))
    torch.testing.assert_close(f2.seen[0], warp_image(image, warp, out.history[1], (16, 16)))


# -- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("update", ["eq10", "inverse"])
def test_gradcheck_through_every_recurrence(update) -> None:
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    p_init = 0.05 * torch.randn(2, 6, generator=gen, dtype=torch.float64)
    weight = 0.02 * torch.randn(6, 36, generator=gen, dtype=torch.float64)
    bias = 0.01 * torch.randn(6, generator=gen, dtype=torch.float64)
    linear = nn.Linear(36, 6).double()
    model = ICSTN(nn.Sequential(nn.Flatten(), linear), warp=Affine(), n_warps=3,
                  template_shape=(6, 6), update=update).double()  # fmt: skip

    def run(w, b):
        params = {"predictor.1.weight": w, "predictor.1.bias": b}
        out = torch.func.functional_call(model, params, (image, p_init))
        return out.image, out.history

    inputs = (weight.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(run, inputs, fast_mode=True)
    # and every recurrence's dp moves the final output
    seen = []

    def keep(module, inputs, dp):
        dp.retain_grad()
        seen.append(dp)

    linear.register_forward_hook(keep)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    model(image, p_init).image.square().sum().backward()
    assert len(seen) == 3 and all(dp.grad.abs().sum() > 0 for dp in seen)


# -- IC-LK as a one-linear-layer IC-STN ([LL17] eqs. (5)-(6)) --------------------------------


@pytest.mark.parametrize("photometric", [None, "bias"])
@pytest.mark.parametrize(
    "warp, channels", [(Affine(), None), (Homography(), 3)], ids=["affine-grey", "homography-rgb"]
)
def test_from_iclk_reproduces_the_iclk_trajectory(warp, channels, photometric) -> None:
    rgb = skdata.astronaut()[::4, ::4] / 255.0  # (128, 128, 3)
    image = rgb.mean(-1) if channels is None else rgb
    P = warp.n_params
    p_true = np.zeros(P)
    p_true[[0, 2, 4, 5]] = [-0.55, 0.1, -0.6, -0.05]
    if warp.projective:
        p_true[6:] = [0.05, -0.03]
    axis = None if channels is None else -1
    T = warp_image(image, warp, p_true, (36, 40), channel_axis=axis)
    p_init = perturb(warp, p_true, 1.5, (36, 40), np.random.default_rng(6), n=6)
    # tol=0: IC-LK never freezes an alignment, like the network (ICSTN.from_iclk docstring)
    iclk = ICLK(T, warp, n_iter=12, tol=0.0, channel_axis=axis, photometric=photometric)
    if photometric:
        image = image * 0.9 + 0.1  # an offset "bias" is blind to (and a gain it is not)
    expected = iclk.align(image, p_init)
    model = ICSTN.from_iclk(iclk)
    assert model.update == "inverse" and model.n_warps == 12
    assert next(model.parameters()).dtype == torch.float64
    torch_image = torch.as_tensor(image)[None, None] if axis is None else (
        torch.as_tensor(image).permute(2, 0, 1)[None]
    )  # fmt: skip
    got = model.align(torch_image, torch.as_tensor(p_init))
    assert np.abs(got.history.numpy() - expected.history).max() < 1e-6
    assert np.abs(expected.history[-1] - expected.history[0]).max() > 1e-2  # it did move


def test_from_iclk_refuses_a_step_that_is_not_linear() -> None:
    T = skdata.camera()[::8, ::8] / 255.0
    with pytest.raises(ValueError, match="not linear"):
        ICSTN.from_iclk(ICLK(T, Affine(), photometric="gain-bias"))


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_value_error_naming_the_argument() -> None:
    model = ICSTN(mnist_predictor("b"), n_warps=2, template_shape=(28, 28))
    with pytest.raises(ValueError, match="image"):
        model(torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="image"):
        model.align(np.zeros((1, 1, 28, 28)), np.zeros(8))
    with pytest.raises(ValueError, match="p_init"):
        model(torch.rand(2, 1, 28, 28), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="batch"):
        model(torch.rand(2, 1, 28, 28), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="n_warps"):
        model(torch.rand(2, 1, 28, 28), None, n_warps=-1)
    with pytest.raises(ValueError, match="n_iter"):
        model.align(torch.rand(2, 1, 28, 28), torch.zeros(2, 8), n_iter=1.5)
    with pytest.raises(ValueError, match="update"):
        ICSTN(mnist_predictor("b"), template_shape=(28, 28), update="forward")
    with pytest.raises(ValueError, match="template_shape"):
        ICSTN(mnist_predictor("b"), template_shape=(28,))
    with pytest.raises(ValueError, match="template"):
        ICSTN(mnist_predictor("b"), template_shape=(28, 28), template=torch.zeros(27, 28))
    with pytest.raises(ValueError, match="n_warps"):
        CSTN([mnist_predictor("b")], template_shape=(28, 28))(torch.rand(1, 1, 28, 28), n_warps=2)
    with pytest.raises(ValueError, match="predictors"):
        CSTN(mnist_predictor("b"), template_shape=(28, 28))
    with pytest.raises(ValueError, match="pyramid"):
        ICSTN.from_iclk(ICLK(camera(4)[:40, :40], Affine(), pyramid=2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(7)
    pred = mnist_predictor("a", generator=gen)
    with torch.no_grad():
        pred.layers[-1].weight.normal_(0.0, 1e-3, generator=gen)
    cpu = ICSTN(pred, n_warps=3, template_shape=(28, 28))
    image, p_init = torch.rand(4, 1, 28, 28, generator=gen), torch.zeros(4, 8)
    out_cpu = cpu(image, p_init)
    cuda = cpu.to("cuda")
    out = cuda(image.cuda(), p_init.cuda())
    assert out.image.device.type == "cuda"
    torch.testing.assert_close(out.history.cpu(), out_cpu.history, rtol=1e-4, atol=1e-5)


def test_cstn_and_icstn_are_siblings_over_the_compositional_recurrence():
    """An IC-STN is not a c-STN; both share CompositionalTransformer and name their own class."""
    from lkstn.learned.stn import CompositionalTransformer

    icstn = ICSTN(mnist_predictor("b"), n_warps=2, template_shape=(28, 28))
    cstn = CSTN([mnist_predictor("b")], template_shape=(28, 28))
    assert isinstance(icstn, CompositionalTransformer) and isinstance(
        cstn, CompositionalTransformer
    )
    assert not isinstance(icstn, CSTN) and not isinstance(cstn, ICSTN)
    assert (icstn.config["model"], cstn.config["model"]) == ("ICSTN", "CSTN")
    assert [k for k, _ in icstn.state_dict().items()] == [
        k for k, _ in icstn.named_parameters()
    ]  # the predictor's weights alone: no extra module or buffer
