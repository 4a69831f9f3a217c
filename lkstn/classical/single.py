"""``ICLK(dtype="float32")``: the image sampled in single precision, through PyTorch.

ICLK's part: with ``self.dtype`` float32, :class:`SinglePrecision` gives the Gauss-Newton loop
:class:`lkstn.classical.torch_sampler.SingleSampler` (``grid_sample``) in place of the float64
sampler, and runs each ``align`` on one torch thread (``torch_sampler.one_thread``: its calls
are too short to share, and torch's default of a thread per core collapses on a busy machine,
``docs/registration.md``). PyTorch is imported at the first float32 alignment only; the warp
update and the convergence test stay float64.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lkstn.classical._gauss_newton import GaussNewton, Level
from lkstn.classical._sampler import Samples
from lkstn.result import AlignmentResult

__all__ = ["SinglePrecision"]


class SinglePrecision(GaussNewton):
    """The float32 path of an aligner with a ``dtype`` attribute (ICLK)."""

    dtype: type = np.float64

    def align(self, image: npt.ArrayLike, p_init: npt.ArrayLike, n_iter: int | None = None,
              *, chunk_size: int | None = None) -> AlignmentResult:  # fmt: skip
        """See :meth:`GaussNewton.align`; ``dtype="float32"`` samples on one torch thread."""
        if self.dtype != np.float32:
            return super().align(image, p_init, n_iter, chunk_size=chunk_size)
        from lkstn.classical.torch_sampler import one_thread  # imports torch

        with one_thread():
            return super().align(image, p_init, n_iter, chunk_size=chunk_size)

    def _sampler(self, images: np.ndarray, level: Level) -> Samples:
        if self.dtype == np.float32:
            from lkstn.classical.torch_sampler import SingleSampler  # imports torch

            return SingleSampler(images, self.warp, level.template.shape[:2])
        return super()._sampler(images, level)
