"""Photometric invariance for IC-LK: an offset (and a gain) per channel between image and template.

IC-LK minimises ``||I(p) - T||^2``, so an image brighter or of more contrast than the template
pulls the warp off (or stops it converging). Two remedies, both computed once from the template:

``"bias"``: project out the offsets ([BM04] Sec. 4.2 "project out"; Hager & Belhumeur 1998).
    With ``Q`` the orthonormal constant image of each channel, the steepest-descent images become
    ``(1 - Q^T Q) sd`` and the cost ``||(1 - Q^T Q)(I(p) - T)||^2``: what an offset per channel
    cannot explain. Still linear in ``I(p)``: ``dp = R I(p) + b``.
``"gain-bias"``: compare zero-mean images of equal contrast, as OpenCV's ECC does (its enhanced
    correlation coefficient). The steepest-descent images are projected orthogonal to each
    channel's constant and to the template's zero-mean channel ``t_c``; each zero-mean channel
    ``i_c`` of ``I(p)`` is scaled to the template's contrast, ``s_c = ||t_c|| / ||i_c||``, so
    the step is ``dp = sum_c s_c R_c I_c(p)`` and the cost ``sum_c ||s_c i_c - t_c||^2 =
    sum_c 2 ||t_c||^2 (1 - rho_c)``, with ``rho_c`` the correlation coefficient of the channel.
    That is the inverse-compositional twin of ECC's step (its ``lambda`` is ``1 / s_c`` here):
    with a fixed projection only, a gain above 2 makes Gauss-Newton overshoot and diverge.

Everything reduces to products of the error image ``e = I(p) - T`` with fixed rows (``R`` per
channel, and ``Q``) and per-channel sums of squares of ``e``, so the aligner keeps its fused,
block-by-block evaluation; :meth:`Photometric.finish` turns those into the step and the cost.
With a template mask of weights ``w``, every residual is multiplied by ``sqrt(w)``
(weighted least squares); the same algebra holds in that space, with ``sqrt(w)`` for the
constant image and ``sqrt(w) (T - mean_w T)`` for the template's zero-mean channel.
Glossary: ``C`` channels, ``N`` pixels per channel, ``P`` warp parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MODES", "Photometric"]

MODES = (None, "bias", "gain-bias")


@dataclass(frozen=True)
class Photometric:
    """The photometric model of one template (one pyramid level): ``Photometric.of(T, mode)``.

    Attributes
    ----------
    mode : None, "bias" or "gain-bias"
    Q : ndarray (k, N*C)
        Rows projected out: per channel its constant image (``"bias"``, ``k = C``), then the
        template's normalised zero-mean channel (``"gain-bias"``, ``k = 2C``; a zero row for a
        flat channel). Orthonormal apart from those zero rows; ``(0, N*C)`` for ``None``.
    t_norm : ndarray (C,)
        ``||t_c||``, the template's contrast per channel.
    """

    mode: str | None
    Q: np.ndarray
    t_norm: np.ndarray

    @classmethod
    def of(
        cls, template: np.ndarray, mode: str | None, root_w: np.ndarray | None = None
    ) -> Photometric:
        """From a template ``(h, w, C)``; ``root_w`` ``(h*w, 1)``: square roots of the mask's
        weights, for residuals weighted by them (the constant image becomes ``root_w``, and the
        template's channels are centred on their weighted means and weighted likewise)."""
        if mode not in MODES:
            raise ValueError(f"photometric must be one of {MODES}, got {mode!r}")
        h, w, C = template.shape
        r = np.ones((h * w, 1)) if root_w is None else root_w
        T = template.reshape(h * w, C)
        t = r * (T - (r * r * T).sum(0) / (r * r).sum())  # weighted zero-mean channels
        t_norm = np.sqrt((t * t).sum(0))
        rows = []
        for c in range(C if mode else 0):
            one = np.zeros((h * w, C))
            one[:, c] = r[:, 0] / np.sqrt((r * r).sum())
            rows.append(one.ravel())
            if mode == "gain-bias":
                gain = np.zeros((h * w, C))
                if t_norm[c] > 0:
                    gain[:, c] = t[:, c] / t_norm[c]
                rows.append(gain.ravel())
        Q = np.array(rows).reshape(len(rows), h * w * C)
        return cls(mode, Q, t_norm)

    def project(self, sd: np.ndarray) -> np.ndarray:
        """Steepest-descent images ``(N*C, P)`` made blind to offsets (and gains)."""
        return sd - self.Q.T @ (self.Q @ sd)

    def products(self, R: np.ndarray) -> np.ndarray:
        """The rows that multiply the error image: ``R`` (per channel for ``"gain-bias"``, which
        scales each channel's share of the step), then ``Q``: ``(P [* C] + k, N*C)``."""
        C = len(self.t_norm)
        if self.mode == "gain-bias" and C > 1:
            channel = np.arange(R.shape[1]) % C  # the (h, w, C) ravel: channel is the last index
            R = np.concatenate([np.where(channel == c, R, 0.0) for c in range(C)])
        return np.concatenate([R, self.Q])

    def correlation(self, ssd: np.ndarray) -> np.ndarray | None:
        """The ZNCC of template and image (``rho``, in ``[-1, 1]``) from :meth:`finish`'s sum
        of squared residuals, ``2 ||t||^2 (1 - rho)`` for one channel with ``"gain-bias"``;
        None for other models and several channels, whose cost does not give it."""
        if self.mode != "gain-bias" or len(self.t_norm) != 1:
            return None
        return np.clip(1.0 - np.asarray(ssd, dtype=float) / (2.0 * self.t_norm[0] ** 2), -1, 1)

    def finish(self, proj: np.ndarray, sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sum of squared residuals (n,), dp (n, P))`` from ``proj = products(R) @ e``
        ``(n, rows)`` and the per-channel sums of squares of ``e``, ``sq`` ``(n, C)``."""
        n, C = sq.shape
        k = len(self.Q)
        if self.mode != "gain-bias":
            q = proj[:, proj.shape[1] - k :]
            ssd = sq.sum(1) - np.einsum("nk,nk->n", q, q)  # what the offsets leave
            return np.maximum(ssd, 0.0), proj[:, : proj.shape[1] - k]
        P = (proj.shape[1] - k) // C
        steps = proj[:, : P * C].reshape(n, C, P)  # R_c e_c
        q = proj[:, P * C :].reshape(n, C, 2)
        mean_part, gain_part = q[..., 0], q[..., 1] * self.t_norm  # <e_c, 1>/sqrt(N), <e_c, t_c>
        tn2 = self.t_norm**2
        i_norm = np.sqrt(np.maximum(sq - mean_part**2 + 2 * gain_part + tn2, 0.0))  # ||i_c||
        textured = self.t_norm > 0  # a flat template channel carries no information
        scale = np.where(textured, self.t_norm / np.where(textured, i_norm, 1.0), 0.0)  # s_c
        dp = np.einsum("nc,ncp->np", scale, steps)
        rho = (gain_part + tn2) / (self.t_norm * i_norm)  # correlation coefficient per channel
        ssd = np.where(textured, 2 * tn2 * (1 - rho), 0.0).sum(1)
        return np.where(np.isfinite(ssd), ssd, np.nan), dp
