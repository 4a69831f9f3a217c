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
# # 2. Supervised Descent: learning the regressor from data
#
# Notebook 1 showed that an IC-LK step is a fixed linear regressor of the warped image,
# $\Delta\mathbf{p} = \mathbf{R}\,\mathcal{I}(\mathbf{p}) + \mathbf{b}$ ([LL17] eq. 6), with
# $\mathbf{R}$ *derived* from the template. The Supervised Descent Method (SDM, Xiong & De la Torre
# 2013) *learns* $\mathbf{R}$ and $\mathbf{b}$ from perturbed examples ([LL17] eq. 7):
#
# $$\min_{\mathbf{R}, \mathbf{b}} \sum_{n=1}^N \sum_{j=1}^M \big\|\delta\mathbf{p}_{n,j} -
# \mathbf{R}\,\mathcal{I}_n(\mathbf{p}_n \circ \delta\mathbf{p}_{n,j}) - \mathbf{b}\big\|_2^2
# \;+\; \alpha\|\mathbf{R}\|_F^2 .$$
#
# You will learn:
#
# 1. the paper's **noise model** for the perturbations $\delta\mathbf{p}$;
# 2. to fit one regressor by **ridge regression** by hand, and check it against `SDM` and
#    scikit-learn;
# 3. how a **cascade of stages**, each trained on the errors the previous ones leave, reduces the
#    error;
# 4. that SDM's first regressor **tends to IC-LK's** as the perturbations shrink.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (6, 3), "font.size": 9})
np.set_printoptions(precision=4, suppress=True)

# %%
from scipy import ndimage
from sklearn.linear_model import Ridge

from lkstn import ICLK, SDM, Affine, warp_image
from lkstn.classical.sdm import ridge_regression
from lkstn.experiments.convergence import safe_corner_error
from lkstn.experiments.problems import planar_problem
from lkstn.perturb import perturb, perturbation
from lkstn.viz import plot_grid

warp = Affine()
prob = planar_problem((50, 50))  # the cat, 50 x 50 template of a 100 x 100 px box
image, T, p_true, shape = prob.image, prob.template, prob.p_true, prob.template_shape

# %% [markdown]
# ## 2.1 The noise model
#
# [LL17] Sec. 5: each of the four template corners $(\pm1, \pm1)$ moves by i.i.d. Gaussian noise of
# standard deviation $\sigma$ template pixels per axis, plus one translation of the same scale shared
# by the four corners; the affine warp $\boldsymbol{\delta}$ is then fitted to the moved corners
# (least squares). A training sample is $\mathcal{I}(\mathbf{p}_\text{true} \circ
# \boldsymbol{\delta})$ with target $\boldsymbol{\delta}$.

# %%
sigma = 5.0
delta = perturbation(warp, 2000, sigma, shape, np.random.default_rng(0))  # (2000, 6)
corners = warp.corners()  # (4, 2) canonical
moved_px = (warp.apply(delta, corners) - corners) * (shape[1] - 1) / 2  # (2000, 4, 2) pixels
print(f"std of the corner displacement per axis: {moved_px.std():.2f} px (sigma = {sigma:g} px)")
assert sigma < moved_px.std() < np.sqrt(2) * sigma
samples = warp_image(image, warp, warp.compose(p_true, delta[:8]), shape)  # (8, 50, 50)
_ = plot_grid(samples, n_cols=8)  # the figure, without its repr

# %% [markdown]
# Above: 8 training samples
# $\mathcal{I}(\mathbf{p}_\text{true} \circ \boldsymbol{\delta})$. Corner noise and shared shift add
# up to $\sqrt{2}\,\sigma$ per axis before the fit; the affine least-squares fit removes part of the
# corner noise, so the measured spread lies between $\sigma$ and $\sqrt2\sigma$.
#
# ## 2.2 One regressor by ridge regression
#
# With raw pixels as features, $\phi(\mathcal{I}) = \mathcal{I}$ flattened, eq. (7) is ridge
# regression of the targets $\boldsymbol{\delta}$ on the samples. `ridge_regression` solves it in
# closed form (intercept not penalised, scikit-learn's meaning of $\alpha$);
# `SDM(n_stages=1).fit(images, p_true, p_init)` does the same from the starts.

# %%
M, alpha = 500, 10.0
p_init = perturb(warp, p_true, sigma, shape, np.random.default_rng(1), n=M)  # p_true o delta
X = warp_image(image, warp, p_init, shape).reshape(M, -1)  # (500, 2500) raw pixels
target = warp.compose(warp.inverse(p_true), p_init)  # delta, since p_init = p_true o delta
R, b = ridge_regression(X, target, alpha)  # R (6, 2500), b (6,)

R_sdm, b_sdm = SDM(shape, warp, n_stages=1, alpha=alpha).fit(image, p_true, p_init).regressors[0]
np.testing.assert_allclose(R, R_sdm, atol=1e-12)
sk = Ridge(alpha=alpha).fit(X, target)
print("max |R - sklearn| / max |R| = %.1e" % (np.abs(sk.coef_ - R).max() / np.abs(R).max()))

dp = X @ R.T + b  # the learned step, [LL17] eq. (6)
p_one = warp.compose(p_init, warp.inverse(dp))  # applied as IC-LK does: p <- p o dp^-1
err = safe_corner_error(warp, np.stack([p_init, p_one]), p_true, shape)
before, after = np.median(err, 1)
print(f"median corner error on the training starts: {before:.2f} px -> {after:.2f} px")

# %% [markdown]
# ## 2.3 A cascade of stages
#
# One linear map cannot undo a large, nonlinear displacement. SDM learns **sequentially**: stage
# $k$ is fitted on the estimates that stages $1..k-1$ produce from the training starts, so it learns
# the error distribution it will actually see. We fit 4 stages and test them on fresh starts
# (SDM repeats its last stage beyond 4), beside IC-LK from the same starts.

# %%
sdm = SDM(shape, warp, n_stages=4, alpha=alpha)
sdm.fit_perturbed(image, p_true, sigma, M, np.random.default_rng(2))
test = perturb(warp, p_true, sigma, shape, np.random.default_rng(3), n=300)
err_sdm = safe_corner_error(warp, sdm.align(image, test, n_iter=20).history, p_true, shape)
iclk = ICLK(T, warp, n_iter=20, tol=0.0)  # errors: (21, 300) each
err_lk = safe_corner_error(warp, iclk.align(image, test).history, p_true, shape)
fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
axes[0].semilogy(sdm.train_errors, "o--", label="SDM, training starts")
axes[0].semilogy(np.median(err_sdm, 1), ".-", label="SDM, test starts")
axes[0].semilogy(np.median(err_lk, 1), ".-", label="IC-LK, test starts")
axes[0].set(xlabel="stage / iteration", ylabel="median corner error (px)")
axes[0].legend()
axes[1].plot((err_sdm < 1).mean(1), ".-", label="SDM")
axes[1].plot((err_lk < 1).mean(1), ".-", label="IC-LK")
axes[1].set(xlabel="stage / iteration", ylabel="fraction < 1 px")
fig.tight_layout()
for k in (4, 20):
    conv_sdm, conv_lk = (err_sdm[k] < 1).mean(), (err_lk[k] < 1).mean()
    print(f"under 1 px after {k}: SDM {conv_sdm:.0%}, IC-LK {conv_lk:.0%}")


# %% [markdown]
# SDM gets most starts below a pixel in a few stages because it was trained on
# displacements of this size; IC-LK's regressor comes from a linearisation that holds only near the
# truth, so it needs many more iterations from the same starts and loses some of them. The price: SDM
# knows only the distribution it was trained on.

# %% [markdown]
# ## 2.4 SDM's first regressor tends to IC-LK's
#
# For small perturbations $\mathcal{I}(\mathbf{p}_\text{true} \circ \boldsymbol{\delta}) \approx
# \mathcal{T} + \frac{\partial\mathcal{T}}{\partial\mathbf{p}}\boldsymbol{\delta}$, so regressing
# $\boldsymbol{\delta}$ on the samples recovers the pseudo-inverse of the steepest-descent images,
# IC-LK's $\mathbf{R} = \big(\frac{\partial\mathcal{T}}{\partial\mathbf{p}}\big)^\dagger$
# ([LL17] eq. 5), provided the ridge term vanishes faster than the signal ($\propto\sigma^2$) and
# more slowly than the second-order residual ($\propto\sigma^4$): we take
# $\alpha = 100\,\sigma_c^3 M$, $\sigma_c$ the noise in canonical units (the choice of
# `lkstn.experiments.equivalence`).
#
# The limit also needs the linearisation to hold on the template's own grid: IC-LK differentiates
# $\mathcal{T}$ by finite differences, while SDM sees the bilinear image. The cat's fur, sampled
# every 2 image pixels, is too rough for that, so this section blurs the cat (Gaussian, 2 image
# pixels) and compares the raw cat at the smallest $\sigma$.


# %%
def first_regressor(problem, s):
    a = 100 * (s / ((shape[1] - 1) / 2)) ** 3 * M
    sdm1 = SDM(shape, warp, n_stages=1, alpha=a)
    sdm1.fit_perturbed(problem.image, problem.p_true, s, M, np.random.default_rng(4))
    return sdm1.regressors[0][0]  # R (6, 2500)


def gap(R_a, R_b):
    return np.linalg.norm(R_a - R_b) / np.linalg.norm(R_b)


smooth = planar_problem(shape, image=ndimage.gaussian_filter(image, 2.0))
R_lk = ICLK(smooth.template, warp).regressor()[0]
sigmas = [4.0, 2.0, 1.0, 0.5, 0.25]
R_of = {s: first_regressor(smooth, s) for s in sigmas}
gaps = [gap(R_of[s], R_lk) for s in sigmas]
raw_gap = gap(first_regressor(prob, sigmas[-1]), ICLK(T, warp).regressor()[0])
for s, g in zip(sigmas, gaps, strict=True):
    print(f"sigma = {s:4g} px: ||R_sdm - R_iclk|| / ||R_iclk|| = {g:.3f}")
print(f"raw (unblurred) cat at sigma = {sigmas[-1]:g} px: {raw_gap:.3f}")
assert gaps[-1] < 0.5 * gaps[0]  # the gap shrinks with sigma

# %%
fig = plt.figure(figsize=(7.5, 2.7))
ax = fig.add_axes([0.08, 0.17, 0.25, 0.75])
ax.semilogx(sigmas, gaps, "o-")
ax.set_xticks(sigmas, [f"{s:g}" for s in sigmas], minor=False)
ax.minorticks_off()
ax.set(xlabel="sigma (template px)", ylabel="||R_sdm - R_iclk|| / ||R_iclk||", ylim=(0, None))
rows = {"IC-LK": R_lk, "SDM 4 px": R_of[4.0], "SDM 0.25 px": R_of[0.25]}
for i, (name, Rk) in enumerate(rows.items()):
    for k in range(6):
        a = fig.add_axes([0.38 + 0.1 * k, 0.64 - 0.3 * i, 0.095, 0.28])
        scale = np.abs(R_lk[k]).max()
        a.imshow(Rk[k].reshape(shape), cmap="RdBu", vmin=-scale, vmax=scale)
        a.set_xticks([])
        a.set_yticks([])
        if k == 0:
            a.set_ylabel(name, fontsize=8)
        if i == 0:
            a.set_title(f"row p{k + 1}", fontsize=8)

# %% [markdown]
# Each image is one row of $\mathbf{R}$ (the weights that produce $\Delta p_k$) reshaped
# to $50 \times 50$, on a common colour scale per column. At $\sigma = 4$ px SDM's regressor is a
# smoothed version of IC-LK's: it has learned to respond to large displacements. At 0.25 px it
# approaches IC-LK's, and the remaining gap is the finite-difference template gradient of IC-LK
# (notebook 4 shows the same limit with the exact Gauss-Newton regressor).
#
# ## What to try next
#
# * HOG features: `SDM(..., features="hog")`; or any callable `phi(samples, *, channel_axis=None)`.
# * Train at one $\sigma$ and test at another: SDM only knows the distribution it was trained on.
# * More stages, more samples, a different $\alpha$ (`sdm.train_errors` tells the story).
# * Notebook 3 learns the same linear map end to end by gradient descent, inside a spatial
#   transformer.
