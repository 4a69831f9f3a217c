"""Chunked alignment (:func:`lkstn.chunks.align_in_chunks`): the unchunked answer, bounded memory.

- For every aligner (7) and both batch forms (one image with many starts; a batch of images), the
  chunked result equals the unchunked one to rounding (16 layouts x 2 chunk sizes = 32 cases,
  counted in the test ids), and the same call run twice gives the same bits. A chunk changes
  the shapes of the matrix products, and BLAS picks its kernel (and so its order of summation)
  by shape and by CPU: the two differ by a few ulps per product, which the iterations carry
  along (well-conditioned problems: relative 1e-9 in float64, 1e-5 in float32). Bit equality
  between differently shaped products holds on some BLAS kernels and not on others
  (``OPENBLAS_CORETYPE``), so it is never asserted.
- With chunks of 1 alignment (matrix-vector kernels) the results agree to the same rounding.
- Peak memory: aligning 400 starts with an IC-STN that has a template, measured in a fresh
  interpreter with ``ru_maxrss``, stays within a chunk's working set when chunked, and unchunked
  it does not grow with (starts x iterates x image size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from functools import cache

import numpy as np
import pytest
import torch
from scipy import ndimage

from lkstn import ICLK, LK, CompositionalLK, Homography
from lkstn.chunks import align_in_chunks
from lkstn.classical.sdm import SDM
from lkstn.learned.stn import CSTN, ICSTN, STN
from lkstn.perturb import perturb
from lkstn.sampling import pixel_to_canonical, warp_image

WARP = Homography()
SHAPE = (16, 16)
CLASSICAL = {"LK": LK, "CompositionalLK": CompositionalLK, "ICLK": ICLK}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@cache
def problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    noise = np.random.default_rng(0).standard_normal((64, 64))
    image = ndimage.gaussian_filter(noise, 2.0)
    box = np.array([[20.0, 20.0], [43.0, 20.0], [43.0, 43.0], [20.0, 43.0]])
    p_true = WARP.fit(WARP.corners(), pixel_to_canonical(box, image.shape))
    return image, p_true, warp_image(image, WARP, p_true, SHAPE)


@cache
def aligner(name: str, tol: float = 0.0):
    """``tol = 0``: no alignment freezes early, so the batch composition never changes."""
    image, p_true, T = problem()
    if name in CLASSICAL:
        return CLASSICAL[name](T, WARP, n_iter=6, tol=tol, pyramid=2)
    if name == "SDM":
        sdm = SDM(template_shape=SHAPE, warp=WARP, n_stages=2, alpha=1e-2)
        return sdm.fit_perturbed(image, p_true, 1.0, 100, np.random.default_rng(1))
    linear = ICSTN.from_iclk(ICLK(T, WARP, n_iter=3)).predictor.float()
    Tt = torch.as_tensor(T, dtype=torch.float32)
    if name == "STN":
        return STN([linear, linear], warp=WARP, template_shape=SHAPE, template=Tt)
    if name == "CSTN":
        return CSTN([linear, linear], warp=WARP, template_shape=SHAPE, update="inverse",
                    template=Tt)  # fmt: skip
    return ICSTN(linear, warp=WARP, n_warps=3, template_shape=SHAPE, update="inverse", template=Tt)


def starts(n: int, seed: int = 2) -> np.ndarray:
    return perturb(WARP, problem()[1], 1.0, SHAPE, np.random.default_rng(seed), n=n)


def images(n: int) -> np.ndarray:
    """``n`` different images: the problem's image, shifted in brightness and contrast."""
    k = np.arange(n).reshape(n, 1, 1)
    return problem()[0] * (1.0 + 0.01 * k) + 0.02 * k  # (n, 64, 64)


def inputs(name: str, layout: str):
    """``(image, p_init)`` in the aligner's own array kind."""
    image = problem()[0]
    if layout == "one image":
        image, p = image, starts(30)
    elif layout == "one image, starts (5, 6)":
        image, p = image, starts(30).reshape(5, 6, 8)
    elif layout == "image batch":
        image, p = images(30), starts(30)
    elif layout == "image batch, shared start":
        image, p = images(30), problem()[1]
    else:  # "images (3, 1) x starts (3, 10)" (SDM's broadcasting)
        image, p = images(3)[:, None], starts(30).reshape(3, 10, 8)
    if name in ("STN", "CSTN", "ICSTN"):
        batch = image[None] if image.ndim == 2 else image
        return torch.as_tensor(batch, dtype=torch.float32)[:, None], torch.as_tensor(
            p, dtype=torch.float32
        )
    return image, p


LAYOUTS = {
    "LK": ["one image", "image batch"],
    "CompositionalLK": ["one image", "image batch, shared start"],
    "ICLK": ["one image", "one image, starts (5, 6)", "image batch"],
    "SDM": ["one image", "image batch", "images (3, 1) x starts (3, 10)"],
    "STN": ["one image", "image batch"],
    "CSTN": ["one image", "image batch"],
    "ICSTN": ["one image", "image batch"],
}
GRID = [(a, lay, c) for a, lays in LAYOUTS.items() for lay in lays for c in (7, 16)]
IDS = [f"{i + 1:02d}of{len(GRID)}-{a}-{lay}-chunk{c}" for i, (a, lay, c) in enumerate(GRID)]


def as_numpy(x):
    return None if x is None else (x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x))


def assert_same(a, b, exact: bool = True) -> None:
    assert a.history.shape == b.history.shape and a.converged.shape == b.converged.shape
    assert type(a.history) is type(b.history)
    pairs = [(a.history, b.history), (a.cost, b.cost), (a.converged, b.converged)]
    for x, y in pairs:
        x, y = as_numpy(x), as_numpy(y)
        assert (x is None) == (y is None)
        if x is None:
            continue
        assert x.dtype == y.dtype
        if exact or x.dtype == bool:
            np.testing.assert_array_equal(x, y)
        elif x.dtype == np.float32:  # rounding of float32: ~1e-7
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "layout", "chunk"), GRID, ids=IDS)
def test_chunked_equals_unchunked_to_rounding(name, layout, chunk) -> None:
    model = aligner(name)
    image, p = inputs(name, layout)
    whole = model.align(image, p)
    chunked = align_in_chunks(model, image, p, chunk_size=chunk)
    assert_same(whole, chunked, exact=False)
    assert_same(chunked, align_in_chunks(model, image, p, chunk_size=chunk))  # same call: same bits
    n = int(np.prod(as_numpy(whole.converged).shape))
    assert n == 30 and n > chunk  # really chunked


@pytest.mark.parametrize("name", list(CLASSICAL) + ["SDM"])
def test_the_chunk_size_keyword_of_the_classical_aligners(name) -> None:
    model = aligner(name)
    image, p = inputs(name, "one image")
    assert_same(model.align(image, p, chunk_size=7), model.align(image, p), exact=False)
    assert_same(  # the keyword is align_in_chunks itself: the same computation, the same bits
        model.align(image, p, 4, chunk_size=7),
        align_in_chunks(model, image, p, chunk_size=7, n_iter=4),
    )


@pytest.mark.parametrize("name", ["ICLK", "LK", "SDM", "ICSTN"])
def test_chunks_of_one_agree_to_rounding_with_freezing_alignments(name) -> None:
    """Alignments that freeze as they converge, and chunks of 1: equal up to rounding."""
    image, p_true, T = problem()
    if name in CLASSICAL:
        model = CLASSICAL[name](T, WARP, n_iter=30, tol=1e-4)
    elif name == "SDM":
        model = SDM(template_shape=SHAPE, warp=WARP, n_stages=3, alpha=1e-2)
        model.fit_perturbed(image, p_true, 1.0, 300, np.random.default_rng(1))
    else:
        model = aligner(name)
    image, p = inputs(name, "one image")
    whole = model.align(image, p)
    chunked = align_in_chunks(model, image, p, chunk_size=1)
    assert_same(whole, chunked, exact=False)
    assert as_numpy(whole.converged).mean() > 0.5


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_chunk_size_is_named(bad) -> None:
    image, p = inputs("ICLK", "one image")
    with pytest.raises(ValueError, match="chunk_size"):
        align_in_chunks(aligner("ICLK"), image, p, chunk_size=bad)


def test_bad_input_is_still_named_by_the_aligner_and_empty_batches_work() -> None:
    image, p = inputs("ICLK", "one image")
    with pytest.raises(ValueError, match="p_init"):
        align_in_chunks(aligner("ICLK"), image, p[:, :5], chunk_size=7)
    with pytest.raises(ValueError, match="image"):
        align_in_chunks(aligner("ICLK"), image[0], p, chunk_size=7)
    empty = align_in_chunks(aligner("ICLK"), image, p[:0], chunk_size=7)
    assert empty.history.shape == (13, 0, 8) and empty.converged.shape == (0,)


MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    from lkstn.chunks import align_in_chunks
    from lkstn.learned.predictors import LinearPredictor
    from lkstn.learned.stn import ICSTN

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    gen = torch.Generator().manual_seed(0)
    model = ICSTN(LinearPredictor((16, 16), 6), warp="affine", n_warps=4, template_shape=(16, 16),
                  template=torch.rand(1, 16, 16, generator=gen))
    image = torch.rand(1, 1, 256, 256, generator=gen)  # 256 KiB
    p_init = torch.zeros(400, 6)
    model.align(image, p_init[:2])  # warm up: allocator, thread pools
    out = {"base": peak_mib()}
    chunked = align_in_chunks(model, image, p_init, chunk_size=25)
    out["chunked"] = peak_mib()
    whole = model.align(image, p_init)
    out["unchunked"] = peak_mib()
    out["equal"] = bool(torch.equal(whole.history, chunked.history))
    print(json.dumps(out))
""")


@cache
def memory_run() -> dict:
    """Peak RSS (MiB) of a fresh interpreter: base, after chunked, after unchunked align."""
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    return json.loads(out.stdout.splitlines()[-1])


def test_chunked_learned_align_has_bounded_memory() -> None:
    """400 starts in chunks of 25: the growth is a chunk's working set, a few MiB."""
    mem = memory_run()
    assert mem["equal"]
    assert mem["chunked"] - mem["base"] < 100, mem


def test_unchunked_learned_align_does_not_copy_the_image_per_start_and_iterate() -> None:
    """Scoring the history must not materialise the image per start and iterate: the first
    ``_Transformer._cost`` did ``image.repeat(n_iter + 1, ...)`` on the image expanded to the
    batch, (n_iter + 1) x B copies (here 5 x 400 x 256 KiB = 500 MiB; found by this test)."""
    mem = memory_run()
    assert mem["unchunked"] - mem["chunked"] < 100, mem


def test_the_doctest_of_align_in_chunks_runs_here_too() -> None:
    import doctest

    import lkstn.chunks

    failures, tried = doctest.testmod(lkstn.chunks)
    assert tried > 0 and failures == 0
