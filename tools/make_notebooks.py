"""Build the teaching notebooks ``docs/0N_*.ipynb`` from the Python source below, and run them.

The cell sources in this file are the single source of truth: edit them here, then regenerate

    python tools/make_notebooks.py              # build, execute (nbclient), write all four
    python tools/make_notebooks.py 03           # only the notebooks whose name contains "03"
    python tools/make_notebooks.py --no-execute # write them without outputs (not for commit)

Each notebook is executed top to bottom in a fresh ``python3`` kernel (working directory: a
temporary folder) and stored *with* its outputs, so that GitHub renders the figures; the script
prints each one's execution time and file size. ``tests/test_notebooks.py`` executes the stored
notebooks again and checks that they match the sources here. Figures are kept small (72 dpi) so
that each ``.ipynb`` stays well under 500 KB.

Glossary: a *cell* is ``("md", text)`` or ``("code", text)``; ``NOTEBOOKS`` maps a file name to
its list of cells.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CELL_TIMEOUT_S = 300

SETUP = """\
%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (6, 3), "font.size": 9})
np.set_printoptions(precision=4, suppress=True)"""

# --------------------------------------------------------------------------------------------
# 01 Lucas-Kanade
# --------------------------------------------------------------------------------------------

NB1 = [
    (
        "md",
        r"""# 1. Lucas-Kanade from first principles

Lucas-Kanade (LK) aligns a template $\mathcal{T}$ to an image $\mathcal{I}$ by Gauss-Newton on
the sum of squared differences. This notebook builds it up from the library's pieces, following
Lin & Lucey, *Inverse Compositional Spatial Transformer Networks* (CVPR 2017, "[LL17]")
eqs. (1)-(6) and Baker & Matthews, *Lucas-Kanade 20 Years On* (IJCV 2004, "[BM04]").

You will learn:

1. the **canonical frame** and **warps**, and which way `compose` composes;
2. what **warping an image**, $\mathcal{I}(\mathbf{p})$, means;
3. the **steepest-descent images** $\partial\mathcal{T}(\mathbf{0})/\partial\mathbf{p}$ and the
   **Gauss-Newton Hessian**, built by hand and checked against `ICLK`;
4. one **inverse-compositional step** by hand, and why it is a *linear regressor* (eq. 6);
5. how LK, compositional LK and IC-LK compare: trajectories and **convergence against the size of
   the perturbation**.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
from lkstn import ICLK, LK, Affine, CompositionalLK, corner_error, warp_image
from lkstn.experiments.convergence import evaluate, safe_corner_error
from lkstn.experiments.problems import planar_problem
from lkstn.perturb import perturb
from lkstn.sampling import canonical_grid, canonical_to_pixel, image_gradients
from lkstn.viz import plot_boxes


def show(ax, img, title, **kw):
    ax.imshow(img, **{"cmap": "gray", **kw})
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()""",
    ),
    (
        "md",
        r"""## 1.1 The canonical frame and warps

Points are $(x, y)$, $x$ to the right and $y$ down, in the **canonical frame** $[-1, 1]^2$ of an
image: the centres of the corner pixels sit at $\pm 1$ (PyTorch's `align_corners=True`), so
$x_\text{pix} = (x + 1)(W - 1)/2$. A warp $\mathbf{W}(\mathbf{x}; \mathbf{p})$ maps **template**
coordinates to **image** coordinates. For an affine warp ([LL17] eq. 9)

$$\mathbf{M}(\mathbf{p}) = \begin{bmatrix} 1 + p_1 & p_2 & p_3 \\ p_4 & 1 + p_5 & p_6 \\ 0 & 0 & 1
\end{bmatrix}, \qquad \mathbf{p} = \mathbf{0} \text{ is the identity.}$$""",
    ),
    (
        "code",
        """\
warp = Affine()
grid = canonical_grid((3, 4))  # pixel centres of a 3 x 4 frame, (12, 2), row-major
print("corners (canonical):\\n", grid[[0, 3, 8, 11]])
print("the same in pixels:\\n", canonical_to_pixel(grid[[0, 3, 8, 11]], (3, 4)))
print("M(p) for p = (0.1, 0, 0.2, 0, -0.1, 0):\\n", warp.matrix([0.1, 0, 0.2, 0, -0.1, 0]))""",
    ),
    (
        "md",
        r"""**Composition.** `warp.compose(p, q)` is
$\mathbf{M}(\mathbf{p})\,\mathbf{M}(\mathbf{q})$: $\mathbf{q}$ acts on the points **first**. A hand
example with the point $(1, 0)$, a shift $x \mapsto x + 0.5$ and a zoom $x \mapsto 2x$:

* `compose(shift, zoom)`: zoom first, $1 \to 2 \to 2.5$;
* `compose(zoom, shift)`: shift first, $1 \to 1.5 \to 3$.

IC-LK updates $\mathbf{p} \leftarrow \mathbf{p} \circ \Delta\mathbf{p}^{-1}$ =
`compose(p, inverse(dp))` ([BM04]); the c-STN of notebook 3 updates
$\mathbf{p}_\text{out} = \Delta\mathbf{p} \circ \mathbf{p}_\text{in}$ = `compose(dp, p_in)`
([LL17] eq. 10).""",
    ),
    (
        "code",
        """\
shift = np.array([0, 0, 0.5, 0, 0, 0])  # x -> x + 0.5
zoom = np.array([1.0, 0, 0, 0, 1.0, 0])  # x -> 2 x
point = np.array([[1.0, 0.0]])
a = warp.apply(warp.compose(shift, zoom), point)
b = warp.apply(warp.compose(zoom, shift), point)
print("compose(shift, zoom):", a, " compose(zoom, shift):", b)
np.testing.assert_allclose(a, [[2.5, 0.0]])
np.testing.assert_allclose(b, [[3.0, 0.0]])
M_pq = warp.matrix(warp.compose(shift, zoom))
np.testing.assert_allclose(M_pq, warp.matrix(shift) @ warp.matrix(zoom))""",
    ),
    (
        "md",
        r"""## 1.2 Warping an image: $\mathcal{I}(\mathbf{p})$

$\mathcal{I}(\mathbf{p})$ is the image sampled (bilinearly, zeros outside) at
$\mathbf{W}(\mathbf{x}; \mathbf{p})$ for every pixel $\mathbf{x}$ of the template frame:
`warp_image(image, warp, p, template_shape)`. Our problem is the cat of scikit-image: a
$100 \times 100$ px box around its eye, seen through a $50 \times 50$ template. The template **is**
$\mathcal{I}(\mathbf{p}_\text{true})$, so the truth is exact. A start $\mathbf{p}_\text{init} =
\mathbf{p}_\text{true} \circ \boldsymbol{\delta}$ is drawn with the paper's noise model: each
template corner moves by Gaussian noise of $\sigma$ template pixels, plus one shared
translation.""",
    ),
    (
        "code",
        """\
prob = planar_problem((50, 50))
image, T, p_true, shape = prob.image, prob.template, prob.p_true, prob.template_shape
np.testing.assert_array_equal(T, warp_image(image, warp, p_true, shape))  # T = I(p_true)

p_init = perturb(warp, p_true, 5.0, shape, np.random.default_rng(0))  # sigma = 5 template px
print("p_true =", p_true, "\\np_init =", p_init)
print(f"corner error of p_init: {corner_error(warp, p_init, p_true, shape):.2f} px")
fig, axes = plt.subplots(1, 3, figsize=(7, 2.4))
plot_boxes(image, warp, p_true, p_init, ax=axes[0], title="I: truth (red), start (yellow)")
axes[0].set(xlim=(110, 290), ylim=(230, 50))  # zoom on the box
show(axes[1], T, "T = I(p_true)")
show(axes[2], warp_image(image, warp, p_init, shape), "I(p_init)")""",
    ),
    (
        "md",
        r"""## 1.3 The objective, steepest-descent images and the Hessian

LK minimises ([LL17] eqs. 1-2)

$$\min_{\Delta\mathbf{p}} \|\mathcal{I}(\mathbf{p} + \Delta\mathbf{p}) -
\mathcal{T}(\mathbf{0})\|_2^2 \;\approx\; \min_{\Delta\mathbf{p}} \Big\|\mathcal{I}(\mathbf{p}) +
\frac{\partial\mathcal{I}(\mathbf{p})}{\partial\mathbf{p}}\Delta\mathbf{p} -
\mathcal{T}(\mathbf{0})\Big\|_2^2 ,$$

whose Jacobian $\partial\mathcal{I}(\mathbf{p})/\partial\mathbf{p}$ must be recomputed at every
iteration. The **inverse compositional** form warps the template instead ([LL17] eqs. 3-4):

$$\min_{\Delta\mathbf{p}} \|\mathcal{I}(\mathbf{p}) - \mathcal{T}(\Delta\mathbf{p})\|_2^2
\;\approx\; \min_{\Delta\mathbf{p}} \Big\|\mathcal{I}(\mathbf{p}) - \mathcal{T}(\mathbf{0}) -
\frac{\partial\mathcal{T}(\mathbf{0})}{\partial\mathbf{p}}\Delta\mathbf{p}\Big\|_2^2 ,
\qquad \frac{\partial\mathcal{T}(\mathbf{0})}{\partial\mathbf{p}} = \nabla\mathcal{T}\,
\frac{\partial\mathbf{W}}{\partial\mathbf{p}}\Big|_{\mathbf{p}=\mathbf{0}} .$$

The **steepest-descent images** $\partial\mathcal{T}(\mathbf{0})/\partial\mathbf{p}$ are the
template gradient (per canonical unit) times the warp Jacobian at the identity; for an affine warp
$\partial\mathbf{W}/\partial\mathbf{p} = \begin{bmatrix} x & y & 1 & 0 & 0 & 0 \\ 0 & 0 & 0 & x & y
& 1 \end{bmatrix}$. They depend on the template alone, so IC-LK computes them once.""",
    ),
    (
        "code",
        """\
gx, gy = image_gradients(T)  # dT/dx, dT/dy per canonical unit, (50, 50) each
J = warp.jacobian(canonical_grid(shape))  # dW/dp at p = 0, (2500, 2, 6)
print("dW/dp at the top-left pixel (x, y) = (-1, -1):\\n", J[0])
sd = gx.reshape(-1, 1) * J[:, 0, :] + gy.reshape(-1, 1) * J[:, 1, :]  # (2500, 6), [LL17] eq. (4)

iclk = ICLK(T, warp, n_iter=30, tol=1e-6)
np.testing.assert_allclose(sd.reshape(50, 50, 6), iclk.sd_images, atol=1e-12)
print("hand-built steepest-descent images == ICLK.sd_images")
fig, axes = plt.subplots(1, 6, figsize=(8, 1.7))
for k, ax in enumerate(axes):
    v = np.abs(sd[:, k]).max()
    show(ax, sd[:, k].reshape(shape), f"dT/dp{k + 1}", cmap="RdBu", vmin=-v, vmax=v)""",
    ),
    (
        "md",
        r"""$p_3$ and $p_6$ (translations) give the plain $x$ and $y$ gradients; $p_1, p_2$
weigh the $x$ gradient by $x$ and $y$, and so on. The **Gauss-Newton Hessian** is
$\mathbf{H} = \big(\frac{\partial\mathcal{T}}{\partial\mathbf{p}}\big)^\top
\frac{\partial\mathcal{T}}{\partial\mathbf{p}}$, a $6 \times 6$ matrix, also fixed.""",
    ),
    (
        "code",
        """\
H = sd.T @ sd  # (6, 6)
np.testing.assert_allclose(H, iclk.hessian, rtol=1e-12)
print("H =\\n", H.round(1))
print(f"condition number: {np.linalg.cond(H):.1f}")""",
    ),
    (
        "md",
        r"""## 1.4 One Gauss-Newton step by hand, and the linear regressor

The least-squares solution of eq. (4) is ([LL17] eq. 5)

$$\Delta\mathbf{p} = \Big(\frac{\partial\mathcal{T}(\mathbf{0})}{\partial\mathbf{p}}\Big)^\dagger
\big(\mathcal{I}(\mathbf{p}) - \mathcal{T}(\mathbf{0})\big) = \mathbf{H}^{-1}
\Big(\frac{\partial\mathcal{T}}{\partial\mathbf{p}}\Big)^\top \big(\mathcal{I}(\mathbf{p}) -
\mathcal{T}\big), \qquad \mathbf{p} \leftarrow \mathbf{p} \circ \Delta\mathbf{p}^{-1},$$

which is a fixed **linear regressor** of the warped image ([LL17] eq. 6):
$\Delta\mathbf{p} = \mathbf{R}\,\mathcal{I}(\mathbf{p}) + \mathbf{b}$ with
$\mathbf{R} = \mathbf{H}^{-1}(\partial\mathcal{T}/\partial\mathbf{p})^\top$ and
$\mathbf{b} = -\mathbf{R}\,\mathcal{T}$. `ICLK.regressor()` returns $(\mathbf{R}, \mathbf{b})$.""",
    ),
    (
        "code",
        """\
Ip = warp_image(image, warp, p_init, shape)  # I(p), (50, 50)
dp = np.linalg.solve(H, sd.T @ (Ip - T).ravel())  # [LL17] eq. (5)
p_hand = warp.compose(p_init, warp.inverse(dp))  # p <- p o dp^-1
p_lib = ICLK(T, warp, n_iter=1, tol=0.0).align(image, p_init).history[1]
np.testing.assert_allclose(p_hand, p_lib, atol=1e-12)

R, b = iclk.regressor()  # R (6, 2500), b (6,)
np.testing.assert_allclose(R @ Ip.ravel() + b, dp, atol=1e-12)  # [LL17] eq. (6)
before, after = corner_error(warp, np.stack([p_init, p_hand]), p_true, shape)
print("one step by hand == ICLK's first iteration == R I(p) + b")
print(f"corner error: {before:.2f} px -> {after:.2f} px")""",
    ),
    (
        "md",
        r"""## 1.5 LK, compositional LK and IC-LK on the cat

The three variants minimise the same objective. **LK** (forwards additive) recomputes
$\nabla\mathcal{I}(\mathbf{W}(\mathbf{x};\mathbf{p}))\,\partial\mathbf{W}/\partial\mathbf{p}$ and
adds $\mathbf{p} \leftarrow \mathbf{p} + \Delta\mathbf{p}$; **compositional LK** linearises the
warped image at the identity and composes, $\mathbf{p} \leftarrow \mathbf{p} \circ
\Delta\mathbf{p}$; **IC-LK** applies its fixed regressor. Below: the same 30 starts at
$\sigma = 5$ px. Left: the mean corner error (RMS distance of the four template corners, in
template pixels) over the starts that all three bring below 1 px, the *rate of convergence* of
[BM04] Sec. 4.1; right: the fraction below 1 px.""",
    ),
    (
        "code",
        """\
starts = perturb(warp, p_true, 5.0, shape, np.random.default_rng(1), n=30)  # (30, 6)
methods = {
    "LK": LK(T, warp, n_iter=30, tol=1e-6),
    "CompositionalLK": CompositionalLK(T, warp, n_iter=30, tol=1e-6),
    "ICLK": iclk,
}
errors = {  # corner error of every iterate, (31, 30) each
    name: safe_corner_error(warp, method.align(image, starts).history, p_true, shape)
    for name, method in methods.items()
}
common = np.logical_and.reduce([err[-1] < 1 for err in errors.values()])  # (30,)
fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
for name, err in errors.items():
    axes[0].semilogy(err[:, common].mean(1), label=name)
    axes[1].plot((err < 1).mean(1), label=name)
    print(f"{name:16s} converged (< 1 px): {(err[-1] < 1).mean():.0%}")
axes[0].set(xlabel="iteration", ylabel=f"mean error (px), {common.sum()} starts")
axes[1].set(xlabel="iteration", ylabel="fraction < 1 px")
axes[0].legend()
fig.tight_layout()""",
    ),
    (
        "md",
        r"""On the starts that all three bring in, the error falls at nearly the same rate over the
first iterations, [BM04]'s finding that the variants agree to first order; they differ in the tail
and in which starts they bring in. IC-LK does the least work per iteration: one warp and one
$6 \times 2500$ matrix product, where LK rebuilds its steepest-descent images and Hessian.

## 1.6 Convergence against the size of the perturbation

`lkstn.experiments.convergence.evaluate` runs every method on the same fixed starts for each
$\sigma$ and counts a trial as converged when its final corner error is below 1 px ([BM04]
Sec. 4.1). A quick run: 40 starts per $\sigma$.""",
    ),
    (
        "code",
        """\
sigmas = [1.0, 3.0, 5.0, 7.0, 9.0]
report = evaluate(methods, image, p_true, shape, sigmas, n_trials=40, seed=0)
print(report.table())
fig, ax = plt.subplots()
for name in report.methods:
    ax.plot(sigmas, [r.percent_converged[name] for r in report.results], "o-", label=name)
ax.set(xlabel="sigma (template px)", ylabel="% converged", ylim=(0, 105))
ax.legend()
fig.tight_layout()""",
    ),
    (
        "md",
        r"""## 1.7 When the lighting changes

IC-LK minimises $\|\mathcal{I}(\mathbf{p}) - \mathcal{T}\|^2$, so an image that is darker or of
less contrast than the template pulls the warp off: nothing in the sum of squared differences
separates a change of brightness from a change of position. `photometric="gain-bias"` compares
zero-mean images at the template's contrast instead (the correlation coefficient that OpenCV's
ECC maximises): the steepest-descent images are projected orthogonal to the constant image and
to $\mathcal{T}$ itself, once, and each iteration rescales the sampled image's contrast. Same
cost per iteration; on the cat below, half the contrast and a lighter background.""",
    ),
    (
        "code",
        """\
relit = 0.5 * image + 0.3  # the template is unchanged
starts = perturb(warp, p_true, 3.0, shape, np.random.default_rng(2), n=40)
for photometric in (None, "gain-bias"):
    aligner = ICLK(T, warp, n_iter=50, photometric=photometric)
    res = aligner.align(relit, starts)
    err = corner_error(warp, res.p, p_true, shape)
    print(
        f"photometric={photometric!s:9}: {np.mean(err < 1):4.0%} converged, "
        f"median corner error {np.median(err):.3g} px"
    )
    if photometric:
        assert np.mean(err < 1) > 0.9 and np.median(err) < 0.05
    else:
        assert np.mean(err < 1) < 0.5  # SSD is pulled off by the lighting""",
    ),
    (
        "md",
        r"""## 1.8 A wider basin: smoothed steepest-descent images

IC-LK's steepest-descent images describe the template within a pixel or two, so far from the
optimum the linearisation extrapolates badly. `gradient_sigma` takes a second set,
$\mathbf{S}_G$, from a blurred template and projects the error on them, while keeping the
template's own $\mathbf{S} = \nabla\mathcal{T}\,\partial\mathbf{W}/\partial\mathbf{p}$ for how
the error moves:
$$\Delta\mathbf{p} = (\mathbf{S}_G^\top\mathbf{S})^{-1}\,\mathbf{S}_G^\top
(\mathcal{I}(\mathbf{p}) - \mathcal{T}),$$
Newton's method on $\mathbf{S}_G^\top(\mathcal{I}(\mathbf{p}) - \mathcal{T}) = \mathbf{0}$.
Still one fixed regressor $\mathbf{R}$, with $\mathbf{R}\mathbf{S} = \mathbf{I}$: a
displacement along the template's own linearisation comes back exactly, so the exact alignment
is a fixed point and the last iterations are Newton's. (Using $\mathbf{S}_G$ for the Hessian too,
$(\mathbf{S}_G^\top\mathbf{S}_G)^{-1}$, overshoots in the directions the blur damps; lkstn did
that until its seventh session and could then blur by 1 px at most.)""",
    ),
    (
        "code",
        """\
smooth = ICLK(T, warp, n_iter=50, gradient_sigma=3.0)  # 3 template pixels
R, b = smooth.regressor()
print("R S - I:", np.abs(R @ smooth.sd_images.reshape(-1, 6) - np.eye(6)).max())
methods = {"ICLK": ICLK(T, warp, n_iter=50), "ICLK gradient_sigma=3": smooth}
report = evaluate(methods, image, p_true, shape, sigmas, n_trials=40, seed=0)
print(report.table())
pct = [[r.percent_converged[m] for r in report.results] for m in methods]
assert all(s >= p for p, s in zip(*pct, strict=True)) and sum(pct[1]) > sum(pct[0]) + 50""",
    ),
    (
        "md",
        r"""## What to try next

* A coarse-to-fine pyramid widens the basin: `ICLK(T, warp, pyramid=3)`.
* With `photometric="gain-bias"` and `gradient_sigma=3`, ICLK converges at least as often as
  OpenCV's ECC at every $\sigma$ of the benchmark, and with the pyramid more often than ECC's
  multiscale version (`benchmarks/README.md`).
* Other warp families: `Homography()`, `Similarity()`, `Translation()` (from `lkstn`).
* Colour: `planar_problem(color=True)` with `channel_axis=-1` in the aligners.
* Compare with OpenCV's ECC: `benchmarks/classical_vs_ecc.py`.
* Notebook 2 learns $\mathbf{R}$ from data instead of deriving it from the template.""",
    ),
]

# --------------------------------------------------------------------------------------------
# 02 Supervised descent
# --------------------------------------------------------------------------------------------

NB2 = [
    (
        "md",
        r"""# 2. Supervised Descent: learning the regressor from data

Notebook 1 showed that an IC-LK step is a fixed linear regressor of the warped image,
$\Delta\mathbf{p} = \mathbf{R}\,\mathcal{I}(\mathbf{p}) + \mathbf{b}$ ([LL17] eq. 6), with
$\mathbf{R}$ *derived* from the template. The Supervised Descent Method (SDM, Xiong & De la Torre
2013) *learns* $\mathbf{R}$ and $\mathbf{b}$ from perturbed examples ([LL17] eq. 7):

$$\min_{\mathbf{R}, \mathbf{b}} \sum_{n=1}^N \sum_{j=1}^M \big\|\delta\mathbf{p}_{n,j} -
\mathbf{R}\,\mathcal{I}_n(\mathbf{p}_n \circ \delta\mathbf{p}_{n,j}) - \mathbf{b}\big\|_2^2
\;+\; \alpha\|\mathbf{R}\|_F^2 .$$

You will learn:

1. the paper's **noise model** for the perturbations $\delta\mathbf{p}$;
2. to fit one regressor by **ridge regression** by hand, and check it against `SDM` and
   scikit-learn;
3. how a **cascade of stages**, each trained on the errors the previous ones leave, reduces the
   error;
4. that SDM's first regressor **tends to IC-LK's** as the perturbations shrink.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
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
image, T, p_true, shape = prob.image, prob.template, prob.p_true, prob.template_shape""",
    ),
    (
        "md",
        r"""## 2.1 The noise model

[LL17] Sec. 5: each of the four template corners $(\pm1, \pm1)$ moves by i.i.d. Gaussian noise of
standard deviation $\sigma$ template pixels per axis, plus one translation of the same scale shared
by the four corners; the affine warp $\boldsymbol{\delta}$ is then fitted to the moved corners
(least squares). A training sample is $\mathcal{I}(\mathbf{p}_\text{true} \circ
\boldsymbol{\delta})$ with target $\boldsymbol{\delta}$.""",
    ),
    (
        "code",
        """\
sigma = 5.0
delta = perturbation(warp, 2000, sigma, shape, np.random.default_rng(0))  # (2000, 6)
corners = warp.corners()  # (4, 2) canonical
moved_px = (warp.apply(delta, corners) - corners) * (shape[1] - 1) / 2  # (2000, 4, 2) pixels
print(f"std of the corner displacement per axis: {moved_px.std():.2f} px (sigma = {sigma:g} px)")
assert sigma < moved_px.std() < np.sqrt(2) * sigma
samples = warp_image(image, warp, warp.compose(p_true, delta[:8]), shape)  # (8, 50, 50)
plot_grid(samples, n_cols=8);""",
    ),
    (
        "md",
        r"""Above: 8 training samples
$\mathcal{I}(\mathbf{p}_\text{true} \circ \boldsymbol{\delta})$. Corner noise and shared shift add
up to $\sqrt{2}\,\sigma$ per axis before the fit; the affine least-squares fit removes part of the
corner noise, so the measured spread lies between $\sigma$ and $\sqrt2\sigma$.

## 2.2 One regressor by ridge regression

With raw pixels as features, $\phi(\mathcal{I}) = \mathcal{I}$ flattened, eq. (7) is ridge
regression of the targets $\boldsymbol{\delta}$ on the samples. `ridge_regression` solves it in
closed form (intercept not penalised, scikit-learn's meaning of $\alpha$);
`SDM(n_stages=1).fit(images, p_true, p_init)` does the same from the starts.""",
    ),
    (
        "code",
        """\
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
print(f"median corner error on the training starts: {before:.2f} px -> {after:.2f} px")""",
    ),
    (
        "md",
        r"""## 2.3 A cascade of stages

One linear map cannot undo a large, nonlinear displacement. SDM learns **sequentially**: stage
$k$ is fitted on the estimates that stages $1..k-1$ produce from the training starts, so it learns
the error distribution it will actually see. We fit 4 stages and test them on fresh starts
(SDM repeats its last stage beyond 4), beside IC-LK from the same starts.""",
    ),
    (
        "code",
        """\
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
    print(f"under 1 px after {k}: SDM {conv_sdm:.0%}, IC-LK {conv_lk:.0%}")""",
    ),
    (
        "md",
        r"""SDM gets most starts below a pixel in a few stages because it was trained on
displacements of this size; IC-LK's regressor comes from a linearisation that holds only near the
truth, so it needs many more iterations from the same starts and loses some of them. The price: SDM
knows only the distribution it was trained on.""",
    ),
    (
        "md",
        r"""## 2.4 SDM's first regressor tends to IC-LK's

For small perturbations $\mathcal{I}(\mathbf{p}_\text{true} \circ \boldsymbol{\delta}) \approx
\mathcal{T} + \frac{\partial\mathcal{T}}{\partial\mathbf{p}}\boldsymbol{\delta}$, so regressing
$\boldsymbol{\delta}$ on the samples recovers the pseudo-inverse of the steepest-descent images,
IC-LK's $\mathbf{R} = \big(\frac{\partial\mathcal{T}}{\partial\mathbf{p}}\big)^\dagger$
([LL17] eq. 5), provided the ridge term vanishes faster than the signal ($\propto\sigma^2$) and
more slowly than the second-order residual ($\propto\sigma^4$): we take
$\alpha = 100\,\sigma_c^3 M$, $\sigma_c$ the noise in canonical units (the choice of
`lkstn.experiments.equivalence`).

The limit also needs the linearisation to hold on the template's own grid: IC-LK differentiates
$\mathcal{T}$ by finite differences, while SDM sees the bilinear image. The cat's fur, sampled
every 2 image pixels, is too rough for that, so this section blurs the cat (Gaussian, 2 image
pixels) and compares the raw cat at the smallest $\sigma$.""",
    ),
    (
        "code",
        """\
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
assert gaps[-1] < 0.5 * gaps[0]  # the gap shrinks with sigma""",
    ),
    (
        "code",
        """\
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
            a.set_title(f"row p{k + 1}", fontsize=8)""",
    ),
    (
        "md",
        r"""Each image is one row of $\mathbf{R}$ (the weights that produce $\Delta p_k$) reshaped
to $50 \times 50$, on a common colour scale per column. At $\sigma = 4$ px SDM's regressor is a
smoothed version of IC-LK's: it has learned to respond to large displacements. At 0.25 px it
approaches IC-LK's, and the remaining gap is the finite-difference template gradient of IC-LK
(notebook 4 shows the same limit with the exact Gauss-Newton regressor).

## What to try next

* HOG features: `SDM(..., features="hog")`; or any callable `phi(samples, *, channel_axis=None)`.
* Train at one $\sigma$ and test at another: SDM only knows the distribution it was trained on.
* More stages, more samples, a different $\alpha$ (`sdm.train_errors` tells the story).
* Notebook 3 learns the same linear map end to end by gradient descent, inside a spatial
  transformer.""",
    ),
]

# --------------------------------------------------------------------------------------------
# 03 Spatial transformers
# --------------------------------------------------------------------------------------------

NB3 = [
    (
        "md",
        r"""# 3. Spatial transformers, the boundary effect and IC-STN

A spatial transformer network (STN, Jaderberg et al. 2015) predicts a warp from its input image
and resamples that image ([LL17] eq. 8):

$$\mathcal{I}_\text{out}(\mathbf{0}) = \mathcal{I}_\text{in}(\mathbf{p}), \qquad \mathbf{p} =
f\big(\mathcal{I}_\text{in}(\mathbf{0})\big).$$

With a single linear layer, $f(\mathcal{I}) = \mathbf{R}\,\mathcal{I} + \mathbf{b}$ is eq. (6)
again. You will learn:

1. the **boundary effect**: an STN passes *images* from one warp to the next, so what left the
   frame is lost; a compositional STN (c-STN) passes *warp parameters* and always resamples the
   original image;
2. the c-STN's **composition** and its **Jacobians** (eqs. 9-11), checked against autograd;
3. to **train an IC-STN** (one predictor, applied recurrently) with a single linear layer on the
   planar problem, and to read its **error per recurrence**.""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
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
warp = Affine()""",
    ),
    (
        "md",
        r"""## 3.1 The boundary effect ([LL17] Fig. 2)

Crop the cat's eye (`CAT_BOX`, the input of the transformer) and apply a fixed zoom-out by 1.5
about the centre of the frame. The **STN** resamples the crop, $\mathcal{I}_\text{out} =
\mathcal{I}(\mathbf{p}_\text{crop})(\Delta\mathbf{p})$; the **c-STN** composes the warps and
samples the photo once, $\mathcal{I}(\mathbf{p}_\text{crop} \circ \Delta\mathbf{p})$. Both realise
the same geometric warp; they differ in what they can still read. `boundary_effect` measures the
*lost* pixels: output pixels whose STN sample falls outside the crop although the photo has them
(continuous limit $1 - 1/1.5^2 = 55.6\%$).""",
    ),
    (
        "code",
        """\
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
    ax.set_axis_off()""",
    ),
    (
        "md",
        r"""## 3.2 Compositional STN: eqs. (9)-(11)

A c-STN keeps the warp: each stage predicts $\Delta\mathbf{p}$ from
$\mathcal{I}(\mathbf{p}_\text{in})$ and composes ([LL17] eq. 10)

$$\mathbf{M}(\mathbf{p}_\text{out}) = \mathbf{M}(\Delta\mathbf{p})\,
\mathbf{M}(\mathbf{p}_\text{in}), \qquad \texttt{p\_out = warp.compose(dp, p\_in)} .$$

Back-propagation needs $\partial\mathbf{p}_\text{out}/\partial\mathbf{p}_\text{in}$ (to reach
earlier stages) and $\partial\mathbf{p}_\text{out}/\partial\Delta\mathbf{p}$ (to reach this
stage's predictor). For an affine warp both are the identity plus terms linear in the other
argument, like the skip connection of a residual network. `compose_jacobians(warp, dp, p_in)`
gives both in closed form; we check them against `torch.autograd`.""",
    ),
    (
        "code",
        """\
rng = np.random.default_rng(0)
dp, p_in = torch.as_tensor(0.2 * rng.standard_normal((2, 6)))  # float64
p_out = warp.compose(dp, p_in)
torch.testing.assert_close(warp.matrix(p_out), warp.matrix(dp) @ warp.matrix(p_in))  # eq. (10)

J_in, J_dp = compose_jacobians(warp, dp, p_in)  # (6, 6) each, rows: p_out
auto_dp, auto_in = torch.autograd.functional.jacobian(lambda a, c: warp.compose(a, c), (dp, p_in))
torch.testing.assert_close(J_in, auto_in)
torch.testing.assert_close(J_dp, auto_dp)
print("d p_out / d p_in - I (entries of dp):\\n", (J_in - torch.eye(6)).numpy())
print("d p_out / d dp - I (entries of p_in):\\n", (J_dp - torch.eye(6)).numpy())""",
    ),
    (
        "md",
        r"""**A note on the printed eq. (11).** The paper prints
$\partial\mathbf{p}_\text{out}/\partial\mathbf{p}_\text{in} = \mathbf{I} +
\mathbf{A}(\Delta\mathbf{p}) + \mathbf{B}(\mathbf{p}_\text{in})$. Its first matrix $\mathbf{A}$
(entries of $\Delta\mathbf{p}$) is $\partial\mathbf{p}_\text{out}/\partial\mathbf{p}_\text{in} -
\mathbf{I}$, and its second $\mathbf{B}$ (entries of $\mathbf{p}_\text{in}$) is
$\partial\mathbf{p}_\text{out}/\partial\Delta\mathbf{p} - \mathbf{I}$: the printed sum adds the *two
separate* Jacobians (see the docstring of `lkstn.warps.compose_jacobians`). Built by hand from the
printed matrices:""",
    ),
    (
        "code",
        """\
d, q = dp.numpy(), p_in.numpy()
A, B = np.zeros((6, 6)), np.zeros((6, 6))
for r in range(3):  # the printed block structure of eq. (11)
    A[r, r], A[r, r + 3], A[r + 3, r], A[r + 3, r + 3] = d[0], d[1], d[3], d[4]
    B[r, 0], B[r, 1], B[r + 3, 3], B[r + 3, 4] = q[r], q[r + 3], q[r], q[r + 3]
np.testing.assert_allclose(A, J_in.numpy() - np.eye(6), atol=1e-15)
np.testing.assert_allclose(B, J_dp.numpy() - np.eye(6), atol=1e-15)
printed = np.eye(6) + A + B
print(f"max |printed eq. (11) - d p_out / d p_in| = {np.abs(printed - J_in.numpy()).max():.3f}")""",
    ),
    (
        "md",
        r"""## 3.3 Training an IC-STN on the planar problem

An **IC-STN** is a c-STN whose stages share **one** predictor, applied recurrently ([LL17]
Sec. 4.2), like IC-LK's fixed regressor. On the cat of notebook 1 (50 x 50 template, affine,
$\sigma = 5$ px) we train two networks whose predictor is a single linear layer on the pixels
(`build_model`; the inputs are standardised by fixed buffers, still one affine map):

* **c-STN-1**: one warp;
* **IC-STN-4**: the same layer unfolded 4 times during training.

The loss is $\|\mathbf{p}_\text{out} - \mathbf{p}_\text{true}\|^2$ on batches of 100 fresh
perturbations (`AlignmentData`), with Adam for 300 steps in three phases of decreasing learning
rate (`lkstn.learned.train.train`; the full recipe is in `lkstn.experiments.planar`).""",
    ),
    (
        "code",
        """\
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
    models[name] = model""",
    ),
    (
        "md",
        r"""## 3.4 Error per recurrence

Run both networks, and IC-LK, for 8 warps from the same 200 test starts (more than the networks
were trained with, [LL17] Fig. 7). The dot marks the depth each network was unfolded to.""",
    ),
    (
        "code",
        """\
test = fixed_starts(warp, prob.p_true, sigma, (50, 50), 200, seed=1)
iclk = ICLK(prob.template, warp, n_iter=8, tol=0.0)
curves = error_curves({**models, "IC-LK": iclk}, prob.image, prob.p_true, test, n_iter=8)
for name, errs in curves.median_corner_px.items():
    print(f"{name:9s} median corner error per warp:", np.round(errs, 2))
fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
for ax, metric in zip(axes, ["median_corner_px", "fraction_converged"], strict=True):
    plot_curves(curves, metric=metric, trained_depth={"c-STN-1": 1, "IC-STN-4": 4}, ax=ax)
med = curves.median_corner_px
assert med["IC-STN-4"][4] < 0.5 < med["c-STN-1"][1]  # the recurrent model ends far closer""",
    ),
    (
        "md",
        r"""One linear warp (c-STN-1) gets within a few pixels; it was trained to act once, so
applying it again helps a little and then stalls around a pixel. The IC-STN learned a map meant to
be *iterated*: each application refines the last, and it holds its accuracy past its trained depth
([LL17] Fig. 7). IC-LK, whose regressor comes from a linearisation at the truth, is still far off
after 8 iterations from these starts (it needs about 20, notebook 1).

## What to try next

* `update="inverse"` (IC-LK's $\mathbf{p} \leftarrow \mathbf{p} \circ \Delta\mathbf{p}^{-1}$)
  instead of eq. (10): `ICSTN(..., update="inverse")`.
* Deeper unfoldings (6), larger $\sigma$, more steps: `lkstn reproduce planar --quick`.
* A homography: `planar_problem(warp="homography")` and `Homography()`.
* Notebook 4: a one-linear-layer IC-STN built from IC-LK reproduces IC-LK exactly.""",
    ),
]

# --------------------------------------------------------------------------------------------
# 04 Equivalence
# --------------------------------------------------------------------------------------------

NB4 = [
    (
        "md",
        r"""# 4. One machine: LK, SDM and spatial transformers

[LL17] argues that IC-LK, SDM and (IC-)STNs with linear predictors are the same computation,
$\Delta\mathbf{p} = \mathbf{R}\,\mathcal{I}(\mathbf{p}) + \mathbf{b}$ applied to a warped image,
with $\mathbf{R}$ *derived* (IC-LK), *regressed* (SDM) or *trained end to end* (STN). This notebook
measures each claimed equivalence with `lkstn.experiments.equivalence` (quick sizes), then draws
[LL17] Fig. 7 for every aligner with `lkstn.experiments.curves`.

You will learn:

1. that a one-linear-layer IC-STN built from IC-LK (`ICSTN.from_iclk`) **is** IC-LK;
2. that SDM's first regressor **tends to** IC-LK's as the perturbations shrink;
3. that closed-form ridge regression **equals** a c-STN-1 trained by gradient descent, for
   translations;
4. how all the aligners compare, iteration by iteration (Fig. 7).""",
    ),
    ("code", SETUP),
    (
        "code",
        """\
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import torch
from IPython.display import Markdown

from lkstn import ICLK, ICSTN, LK, SDM, Affine, CompositionalLK, Homography, Translation
from lkstn.experiments import equivalence as eq
from lkstn.experiments.convergence import fixed_starts, safe_corner_error
from lkstn.experiments.curves import error_curves, plot_curves
from lkstn.experiments.planar import Recipe, build_model
from lkstn.experiments.problems import planar_problem
from lkstn.learned.streams import AlignmentData
from lkstn.learned.train import TrainConfig, train

torch.set_num_threads(1)  # tiny tensors: one thread is faster on a small CPU
warp = Affine()
prob = planar_problem((50, 50))
shape = prob.template_shape""",
    ),
    (
        "md",
        r"""## 4.1 IC-LK is an IC-STN with one linear layer

`ICSTN.from_iclk(iclk)` copies $(\mathbf{R}, \mathbf{b})$ = `iclk.regressor()` into a linear layer
acting on the flattened warped image, with IC-LK's update $\mathbf{p} \leftarrow \mathbf{p} \circ
\Delta\mathbf{p}^{-1}$ (`update="inverse"`). With `tol=0` IC-LK never stops early, and the two
trajectories coincide to rounding.""",
    ),
    (
        "code",
        """\
iclk = ICLK(prob.template, warp, n_iter=10, tol=0.0)
net = ICSTN.from_iclk(iclk)
print(net.predictor)
starts = fixed_starts(warp, prob.p_true, 2.5, shape, 8, seed=0)  # (8, 6)
h_lk = iclk.align(prob.image, starts).history  # (11, 8, 6)
image_t = torch.as_tensor(prob.image)[None, None]  # (1, 1, H, W), float64
h_net = net.align(image_t, torch.as_tensor(starts)).history.numpy()
diff = np.abs(h_net - h_lk).max((1, 2))
print("max |p_iclk - p_icstn| per iteration:", diff)
assert diff.max() < 1e-9
fig, ax = plt.subplots(figsize=(5, 2.6))
ax.semilogy(safe_corner_error(warp, h_lk, prob.p_true, shape), "-", color="C0", lw=1)
ax.semilogy(safe_corner_error(warp, h_net, prob.p_true, shape), "o", color="C1", ms=3)
ax.set(xlabel="iteration", ylabel="corner error (px)", title="IC-LK (lines), IC-STN (dots)")
fig.tight_layout()
rows = [eq.iclk_vs_icstn(w, n_iter=10, n_starts=8) for w in (Affine(), Homography())]
Markdown(eq.markdown_table(rows))""",
    ),
    (
        "md",
        r"""## 4.2 SDM tends to IC-LK as $\sigma \to 0$

`sdm_vs_iclk` fits SDM's first stage on a smooth random image (one image pixel per template
pixel, so that tiny perturbations stay inside their bilinear cells) at shrinking $\sigma$, with
$\alpha = 100\,\sigma_c^3 M$, and reports $\|\mathbf{R}_\text{SDM} - \mathbf{R}_\text{IC-LK}\| /
\|\mathbf{R}_\text{IC-LK}\|$. The detail column gives the distance to the *exact* Gauss-Newton
regressor (finite differences of `warp_image`), which keeps falling like $\sigma$; against IC-LK
the gap stalls at the template's finite-difference gradient.""",
    ),
    (
        "code",
        """\
sdm_rows = eq.sdm_vs_iclk(sigmas=(0.4, 0.1, 0.025), n_samples=500)
Markdown(eq.markdown_table(sdm_rows))""",
    ),
    (
        "md",
        r"""## 4.3 Closed-form ridge = a c-STN-1 trained by gradient descent (translations)

For a translation, composition is addition: a c-STN-1 with `update="inverse"` outputs
$\mathbf{p}_\text{out} = \mathbf{p}_\text{in} - \Delta\mathbf{p}$, $\Delta\mathbf{p} =
\mathbf{W}\mathcal{I}(\mathbf{p}_\text{in}) + \mathbf{b}$. Its loss
$\sum\|\mathbf{p}_\text{out} - \mathbf{p}_\text{true}\|^2 + \alpha\|\mathbf{W}\|^2$ is then
exactly SDM's eq. (7) with $\boldsymbol{\delta} = \mathbf{p}_\text{in} - \mathbf{p}_\text{true}$.
`ridge_vs_cstn` trains the network by full-batch L-BFGS on the same samples and compares its
weights with `SDM(n_stages=1)`. For an affine warp composition is not additive and the two
objectives differ: that gap is reported, not checked.""",
    ),
    (
        "code",
        """\
ridge_rows = [
    eq.ridge_vs_cstn(w, h=12, n_samples=300, max_rounds=3) for w in (Translation(), Affine())
]
Markdown(eq.markdown_table(ridge_rows))""",
    ),
    (
        "code",
        """\
checks = rows + sdm_rows + ridge_rows
assert all(c.passed is not False for c in checks), eq.markdown_table(checks)
n_passed, n_info = sum(c.passed is True for c in checks), sum(c.passed is None for c in checks)
print(f"{n_passed} checks passed, {n_info} rows reported for information")""",
    ),
    (
        "md",
        r"""## 4.4 Fig. 7 for every aligner

Every aligner runs 10 iterations from the same 200 test starts at $\sigma = 5$ px, and we plot
the mean and median corner error after each one: LK, compositional LK, IC-LK, a 4-stage SDM
(its last stage repeats past stage 4), and three networks with one linear layer trained briefly
(150 Adam steps each, much shorter than `lkstn reproduce planar`): c-STN-1, IC-STN-2 and
IC-STN-4. A dot marks each network's trained depth.""",
    ),
    (
        "code",
        """\
sigma = 5.0
kw = dict(warp=warp, n_iter=10, tol=1e-6)
aligners = {
    "LK": LK(prob.template, **kw),
    "CompositionalLK": CompositionalLK(prob.template, **kw),
    "ICLK": ICLK(prob.template, **kw),
    "SDM-4": SDM(shape, warp, n_stages=4, alpha=10.0).fit_perturbed(
        prob.image, prob.p_true, sigma, 500, np.random.default_rng(0)
    ),
}
data_cat = AlignmentData(
    torch.as_tensor(prob.image, dtype=torch.float32)[None],
    torch.as_tensor(prob.p_true, dtype=torch.float32),
)
depths = {"c-STN-1": 1, "IC-STN-2": 2, "IC-STN-4": 4}
for name, depth in depths.items():
    model = build_model(prob, depth, sigma, Recipe())
    for phase, factor in enumerate([1.0, 0.3, 0.1]):
        config = TrainConfig(
            n_steps=50, sigma=sigma, optimizer="adam", lr_predictor=4e-5 * factor / depth,
            seed=phase, n_test=100, eval_every=50, progress=False,
        )  # fmt: skip
        train(model, config, data_cat)
    aligners[name] = model""",
    ),
    (
        "code",
        """\
test = fixed_starts(warp, prob.p_true, sigma, shape, 200, seed=1)
curves = error_curves(aligners, prob.image, prob.p_true, test, n_iter=10)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, metric in zip(axes, ["mean_corner_px", "median_corner_px"], strict=True):
    plot_curves(curves, metric=metric, trained_depth=depths, ax=ax)
for name in curves.median_corner_px:
    median, done = curves.median_corner_px[name][-1], curves.fraction_converged[name][-1]
    print(f"{name:16s} after 10: median {median:7.3f} px, {done:.0%} under 1 px")
med = curves.median_corner_px
assert med["IC-STN-4"][-1] < med["IC-STN-2"][-1] < med["c-STN-1"][-1]  # deeper is better""",
    ),
    (
        "md",
        r"""After 10 iterations the classical methods are still on their way (they need about 20
from these starts, notebook 1), and their mean is dominated by the starts outside their basin. SDM
and the networks learned from samples of this very distribution, so they take larger, better-aimed
steps. The deeper the unfolding during training, the lower the error a network settles at, and none
of them drifts off when run past its trained depth: the recurrent IC-STN behaves like an iterative
aligner with a learned step, [LL17] Fig. 7.

## What to try next

* The whole table, longer: `lkstn reproduce equivalence` and `lkstn reproduce planar`.
* `eq.compose_jacobian_checks()`: eq. (11) against autograd, for a homography too.
* Train the networks with IC-LK's update (`model.update = "inverse"` before `train`), or for
  more steps, and watch Fig. 7 change.""",
    ),
]

NOTEBOOKS = {
    "01_lucas_kanade.ipynb": NB1,
    "02_supervised_descent.ipynb": NB2,
    "03_spatial_transformers.ipynb": NB3,
    "04_equivalence.ipynb": NB4,
}


def build(cells: list[tuple[str, str]]):
    """An unexecuted ``nbformat`` v4 notebook from ``(kind, source)`` cells."""
    import nbformat

    make = {"md": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb = nbformat.v4.new_notebook()
    nb.cells = [make[kind](source) for kind, source in cells]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating does not churn the diff
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


def execute(nb, timeout: int = CELL_TIMEOUT_S):
    """Run ``nb`` top to bottom in a fresh ``python3`` kernel, in a temporary folder."""
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory() as cwd:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": cwd}},
            record_timing=False,
        )
        client.execute()
    nb.metadata["language_info"] = {"name": "python"}  # drop the kernel's version details
    return nb


def main(argv: list[str] | None = None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="substrings of the notebooks to build")
    parser.add_argument("--no-execute", action="store_true", help="write without outputs")
    args = parser.parse_args(argv)
    chosen = [n for n in NOTEBOOKS if not args.names or any(s in n for s in args.names)]
    if not chosen:
        parser.error(f"no notebook matches {args.names}; have {list(NOTEBOOKS)}")
    for name in chosen:
        nb = build(NOTEBOOKS[name])
        start = time.perf_counter()
        if not args.no_execute:
            execute(nb)
        seconds = time.perf_counter() - start
        path = DOCS / name
        nbformat.write(nb, path)
        print(f"{name}: executed in {seconds:.1f} s, {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
