# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Spatial transformers, the boundary effect and IC-STN
#
# A spatial transformer network (STN, Jaderberg et al. 2015) predicts a warp from its input image
# and resamples that image ([LL17] eq. 8):
#
# $$\mathcal{I}_\text{out}(\mathbf{0}) = \mathcal{I}_\text{in}(\mathbf{p}), \qquad \mathbf{p} =
# f\big(\mathcal{I}_\text{in}(\mathbf{0})\big).$$
#
# With a single linear layer, $f(\mathcal{I}) = \mathbf{R}\,\mathcal{I} + \mathbf{b}$ is eq. (6)
# again. You will learn:
#
# 1. the **boundary effect**: an STN passes *images* from one warp to the next, so what left the
#    frame is lost; a compositional STN (c-STN) passes *warp parameters* and always resamples the
#    original image;
# 2. the c-STN's **composition** and its **Jacobians** (eqs. 9-11), checked against autograd;
# 3. to **train an IC-STN** (one predictor, applied recurrently) with a single linear layer on the
#    planar problem, and to read its **error per recurrence**.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (6, 3), "font.size": 9})
np.set_printoptions(precision=4, suppress=True)

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import torch
from skimage import data

from lkstn import ICLK, Affine
from lkstn.experiments.boundary import boundary_effect, crop_params
from lkstn.experiments.convergence import fixed_starts
from lkstn.experiments.curves import error_curves, plot_curves
from lkstn.experiments.planar import Recipe, build_model
from lkstn.experiments.problems import CAT_BOX, planar_problem
from lkstn.learned.streams import AlignmentData
from lkstn.learned.train import TrainConfig, train
from lkstn.viz import plot_boxes
from lkstn.warps import compose_jacobians

torch.set_num_threads(1)  # tiny tensors: one thread is faster on a small CPU
warp = Affine()

# %% [markdown]
# ## 3.1 The boundary effect ([LL17] Fig. 2)
#
# Crop the cat's eye (`CAT_BOX`, the input of the transformer) and apply a fixed zoom-out by 1.5
# about the centre of the frame. The **STN** resamples the crop, $\mathcal{I}_\text{out} =
# \mathcal{I}(\mathbf{p}_\text{crop})(\Delta\mathbf{p})$; the **c-STN** composes the warps and
# samples the photo once, $\mathcal{I}(\mathbf{p}_\text{crop} \circ \Delta\mathbf{p})$. Both realise
# the same geometric warp; they differ in what they can still read. `boundary_effect` measures the
# *lost* pixels: output pixels whose STN sample falls outside the crop although the photo has them
# (continuous limit $1 - 1/1.5^2 = 55.6\%$).

# %%
rgb = data.chelsea() / 255.0  # (300, 451, 3)
photo = torch.as_tensor(np.moveaxis(rgb, -1, 0))[None]  # (1, 3, H, W), float64
p_crop = crop_params(rgb.shape[:2], CAT_BOX)
out = boundary_effect(photo, p_crop, zoom=1.5, size=64)
lost, limit = out["lost_fraction"], out["expected_lost_fraction"]
print(f"lost pixels (STN): {lost:.1%} (1 - 1/zoom^2 = {limit:.1%})")
print(f"black pixels: STN {out['black_fraction_stn']:.1%}, c-STN {out['black_fraction_cstn']:.1%}")

fig, axes = plt.subplots(1, 4, figsize=(8, 2.2))
plot_boxes(rgb, warp, p_crop, ax=axes[0], title="photo, crop (red)")
titles = {"crop": "crop", "stn": "STN zoom-out", "cstn": "c-STN zoom-out"}
for ax, (key, title) in zip(axes[1:], titles.items(), strict=True):
    ax.imshow(np.clip(out[key].permute(1, 2, 0).numpy(), 0, 1))  # (C, h, w) -> (h, w, C)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()

# %% [markdown]
# ## 3.2 Compositional STN: eqs. (9)-(11)
#
# A c-STN keeps the warp: each stage predicts $\Delta\mathbf{p}$ from
# $\mathcal{I}(\mathbf{p}_\text{in})$ and composes ([LL17] eq. 10)
#
# $$\mathbf{M}(\mathbf{p}_\text{out}) = \mathbf{M}(\Delta\mathbf{p})\,
# \mathbf{M}(\mathbf{p}_\text{in}), \qquad \texttt{p\_out = warp.compose(dp, p\_in)} .$$
#
# Back-propagation needs $\partial\mathbf{p}_\text{out}/\partial\mathbf{p}_\text{in}$ (to reach
# earlier stages) and $\partial\mathbf{p}_\text{out}/\partial\Delta\mathbf{p}$ (to reach this
# stage's predictor). For an affine warp both are the identity plus terms linear in the other
# argument, like the skip connection of a residual network. `compose_jacobians(warp, dp, p_in)`
# gives both in closed form; we check them against `torch.autograd`.

# %%
rng = np.random.default_rng(0)
dp, p_in = torch.as_tensor(0.2 * rng.standard_normal((2, 6)))  # float64
p_out = warp.compose(dp, p_in)
torch.testing.assert_close(warp.matrix(p_out), warp.matrix(dp) @ warp.matrix(p_in))  # eq. (10)

J_in, J_dp = compose_jacobians(warp, dp, p_in)  # (6, 6) each, rows: p_out
auto_dp, auto_in = torch.autograd.functional.jacobian(lambda a, c: warp.compose(a, c), (dp, p_in))
torch.testing.assert_close(J_in, auto_in)
torch.testing.assert_close(J_dp, auto_dp)
print("d p_out / d p_in - I (entries of dp):\n", (J_in - torch.eye(6)).numpy())
print("d p_out / d dp - I (entries of p_in):\n", (J_dp - torch.eye(6)).numpy())

# %% [markdown]
# **A note on the printed eq. (11).** The paper prints
# $\partial\mathbf{p}_\text{out}/\partial\mathbf{p}_\text{in} = \mathbf{I} +
# \mathbf{A}(\Delta\mathbf{p}) + \mathbf{B}(\mathbf{p}_\text{in})$. Its first matrix $\mathbf{A}$
# (entries of $\Delta\mathbf{p}$) is $\partial\mathbf{p}_\text{out}/\partial\mathbf{p}_\text{in} -
# \mathbf{I}$, and its second $\mathbf{B}$ (entries of $\mathbf{p}_\text{in}$) is
# $\partial\mathbf{p}_\text{out}/\partial\Delta\mathbf{p} - \mathbf{I}$: the printed sum adds the *two
# separate* Jacobians (see the docstring of `lkstn.warps.compose_jacobians`). Built by hand from the
# printed matrices:

# %%
d, q = dp.numpy(), p_in.numpy()
A, B = np.zeros((6, 6)), np.zeros((6, 6))
for r in range(3):  # the printed block structure of eq. (11)
    A[r, r], A[r, r + 3], A[r + 3, r], A[r + 3, r + 3] = d[0], d[1], d[3], d[4]
    B[r, 0], B[r, 1], B[r + 3, 3], B[r + 3, 4] = q[r], q[r + 3], q[r], q[r + 3]
np.testing.assert_allclose(A, J_in.numpy() - np.eye(6), atol=1e-15)
np.testing.assert_allclose(B, J_dp.numpy() - np.eye(6), atol=1e-15)
printed = np.eye(6) + A + B
print(f"max |printed eq. (11) - d p_out / d p_in| = {np.abs(printed - J_in.numpy()).max():.3f}")

# %% [markdown]
# ## 3.3 Training an IC-STN on the planar problem
#
# An **IC-STN** is a c-STN whose stages share **one** predictor, applied recurrently ([LL17]
# Sec. 4.2), like IC-LK's fixed regressor. On the cat of notebook 1 (50 x 50 template, affine,
# $\sigma = 5$ px) we train two networks whose predictor is a single linear layer on the pixels
# (`build_model`; the inputs are standardised by fixed buffers, still one affine map):
#
# * **c-STN-1**: one warp;
# * **IC-STN-4**: the same layer unfolded 4 times during training.
#
# The loss is $\|\mathbf{p}_\text{out} - \mathbf{p}_\text{true}\|^2$ on batches of 100 fresh
# perturbations (`AlignmentData`), with Adam for 300 steps in three phases of decreasing learning
# rate (`lkstn.learned.train.train`; the full recipe is in `lkstn.experiments.planar`).

# %%
prob = planar_problem((50, 50))
sigma = 5.0
data_cat = AlignmentData(
    torch.as_tensor(prob.image, dtype=torch.float32)[None],
    torch.as_tensor(prob.p_true, dtype=torch.float32),
)
models = {}
for name, depth in [("c-STN-1", 1), ("IC-STN-4", 4)]:
    model = build_model(prob, depth, sigma, Recipe())  # ICSTN(n_warps=depth), update eq. (10)
    for phase, factor in enumerate([1.0, 0.3, 0.1]):
        config = TrainConfig(
            n_steps=100, sigma=sigma, optimizer="adam", lr_predictor=4e-5 * factor / depth,
            seed=phase, n_test=200, eval_every=100, progress=False,
        )  # fmt: skip
        result = train(model, config, data_cat)
    print(f"{name}: test corner error after training {result.last['test_corner_px']:.2f} px")
    models[name] = model

# %% [markdown]
# ## 3.4 Error per recurrence
#
# Run both networks, and IC-LK, for 8 warps from the same 200 test starts (more than the networks
# were trained with, [LL17] Fig. 7). The dot marks the depth each network was unfolded to.

# %%
test = fixed_starts(warp, prob.p_true, sigma, (50, 50), 200, seed=1)
iclk = ICLK(prob.template, warp, n_iter=8, tol=0.0)
curves = error_curves({**models, "IC-LK": iclk}, prob.image, prob.p_true, test, n_iter=8)
for name, errs in curves.median_corner_px.items():
    print(f"{name:9s} median corner error per warp:", np.round(errs, 2))
fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
for ax, metric in zip(axes, ["median_corner_px", "fraction_converged"], strict=True):
    plot_curves(curves, metric=metric, trained_depth={"c-STN-1": 1, "IC-STN-4": 4}, ax=ax)
med = curves.median_corner_px
assert med["IC-STN-4"][4] < 0.5 < med["c-STN-1"][1]  # the recurrent model ends far closer

# %% [markdown]
# One linear warp (c-STN-1) gets within a few pixels; it was trained to act once, so
# applying it again helps a little and then stalls around a pixel. The IC-STN learned a map meant to
# be *iterated*: each application refines the last, and it holds its accuracy past its trained depth
# ([LL17] Fig. 7). IC-LK, whose regressor comes from a linearisation at the truth, is still far off
# after 8 iterations from these starts (it needs about 20, notebook 1).
#
# ## What to try next
#
# * `update="inverse"` (IC-LK's $\mathbf{p} \leftarrow \mathbf{p} \circ \Delta\mathbf{p}^{-1}$)
#   instead of eq. (10): `ICSTN(..., update="inverse")`.
# * Deeper unfoldings (6), larger $\sigma$, more steps: `lkstn reproduce planar --quick`.
# * A homography: `planar_problem(warp="homography")` and `Homography()`.
# * Notebook 4: a one-linear-layer IC-STN built from IC-LK reproduces IC-LK exactly.
