"""A spatial transformer followed by a classifier: the networks of [LL17] Tables 2-3.

Glossary: ``aligner`` an STN, c-STN or IC-STN; ``classifier`` a network ``(B, C, h, w) ->
(B, n_classes)`` that sees the aligner's final warped image.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lkstn._backend import ArrayLike

__all__ = ["AlignThenClassify"]


class AlignThenClassify(nn.Module):
    """A spatial transformer followed by a classifier that sees its final warped image.

    Parameters
    ----------
    aligner : STN, CSTN or ICSTN
        Any module whose ``forward(image, p_init)`` returns a
        :class:`~lkstn.learned.transformer.Transformed`.
    classifier : nn.Module
        ``(B, C, h, w) -> (B, n_classes)``.

    ``forward(image, p_init)`` returns the class scores ``(B, n_classes)``. The training loop
    (:func:`lkstn.learned.train.train`) gives ``aligner`` and ``classifier`` separate learning
    rates ([LL17] Sec. 5.2).

    Examples
    --------
    >>> import torch
    >>> from lkstn import ICSTN
    >>> from lkstn.learned.predictors import mnist_classifier, mnist_predictor
    >>> from lkstn.learned.classify import AlignThenClassify
    >>> icstn = ICSTN(mnist_predictor("a"), warp="homography", n_warps=4, template_shape=(28, 28))
    >>> model = AlignThenClassify(icstn, mnist_classifier())
    >>> model(torch.rand(2, 1, 28, 28)).shape  # class scores
    torch.Size([2, 10])
    """

    def __init__(self, aligner: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.aligner = aligner
        self.classifier = classifier

    @property
    def config(self) -> dict[str, Any]:
        inner = getattr(self.aligner, "config", {"model": type(self.aligner).__name__})
        return {"model": "AlignThenClassify", "aligner": inner}

    def forward(self, image: Tensor, p_init: ArrayLike | None = None) -> Tensor:
        """Class scores ``(B, n_classes)`` of ``image`` ``(B, C, H, W)`` aligned from ``p_init``."""
        return self.classifier(self.aligner(image, p_init).image)
