"""The images of a classification experiment: train and test sets, subsets, standardisation.

Decisions: images are scaled to [0, 1] (or standardised per image and channel, as the authors'
traffic-sign code); ``--quick`` takes a fixed random subset; the authors' frame resizes the images
so that the template frame is a box inside them.

Glossary: ``exp`` the :class:`~lkstn.experiments.classification.rows.Experiment`; ``frame``
``"own"`` (each image is its template frame) or ``"authors"``; ``box`` the template frame
``(x0, y0, x1, y1)`` in the resized image's pixels.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from lkstn import runs
from lkstn.experiments.classification.rows import Experiment
from lkstn.learned.streams import ClassificationData
from lkstn.problems import box_warp
from lkstn.warps import Homography

__all__ = ["load_data", "standardize_images"]


def load_data(
    exp: Experiment,
    root: str | os.PathLike[str] | None,
    *,
    quick: bool = False,
    seed: int = 0,
    frame: str = "own",
    standardize: bool = False,
) -> tuple[ClassificationData, dict[str, Any]]:
    """Train and test images of ``exp`` as float32 in [0, 1] (or standardised); ``--quick`` takes
    a fixed subset.

    ``frame="own"``: each image is its template frame (zeros outside). ``"authors"``: the images
    are resized to ``exp.authors_frame``'s size and the template frame is its box, so that the
    perturbed samples see the surroundings (the authors' GTSRB code: the central 36x36 box of
    50x50 images). ``standardize``: each image instead has zero mean and unit variance per
    channel over the whole image (:func:`standardize_images`), before any warp.
    """
    if frame not in ("own", "authors") or (frame == "authors" and exp.authors_frame is None):
        allowed = "'own' or 'authors'" if exp.authors_frame else "'own'"
        raise ValueError(f"frame must be {allowed} for {exp.name}, got {frame!r}")
    size, box = exp.authors_frame if frame == "authors" else (None, None)
    x, y, note = exp.load(root, "train", size)
    xt, yt, _ = exp.load(root, "test", size)
    if quick:
        rng = np.random.default_rng(seed)
        n_train, n_test = exp.quick_sizes
        tr = np.sort(rng.permutation(len(x))[:n_train])
        te = np.sort(rng.permutation(len(xt))[:n_test])
        x, y, xt, yt = x[tr], y[tr], xt[te], yt[te]
    data = ClassificationData(
        torch.as_tensor(x, dtype=torch.float32) / 255.0,
        torch.as_tensor(y, dtype=torch.long),
        torch.as_tensor(xt, dtype=torch.float32) / 255.0,
        torch.as_tensor(yt, dtype=torch.long),
        None if box is None else torch.as_tensor(box_warp(Homography(), box, (size, size))),
    )
    if box is not None:
        note += (f"; the template frame is the box {list(box)} of {size}x{size} images (the "
                 "authors' frame: the samples see the surroundings)")  # fmt: skip
    if standardize:
        data = replace(data, images=standardize_images(data.images),
                       test_images=standardize_images(data.test_images))  # fmt: skip
        note += ("; each image standardised per channel (zero mean, unit variance over the "
                 "whole image, before warping; zeros outside are its mean)")  # fmt: skip
    sha = runs.digest(*(np.ascontiguousarray(a).view(np.uint8) for a in (x, y, xt, yt)))
    info = {"note": note, "n_train": len(x), "n_test": len(xt), "quick_subset": quick,
            "frame": frame, "standardize": standardize, "sha256": sha}  # fmt: skip
    return data, info


def standardize_images(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``(N, C, h, w)`` -> a copy with each image and channel at zero mean and unit variance.

    As the authors' traffic-sign code does before warping (``tf.nn.moments`` over each image's
    height and width). A channel flatter than one grey level (standard deviation < 1/255, for
    intensities in [0, 1]) is divided by 1/255, so a flat image becomes zeros rather than NaN or
    amplified noise.
    """
    out = torch.empty_like(images)
    for i in range(0, images.shape[0], chunk):  # chunks: temporaries of one chunk at a time
        x = images[i : i + chunk]
        mean = x.mean((2, 3), keepdim=True)
        std = x.std((2, 3), correction=0, keepdim=True).clamp_min(1.0 / 255.0)
        torch.div(x - mean, std, out=out[i : i + chunk])
    return out
