"""Planar alignment of the cat: IC-STNs with one linear layer against the Lucas-Kanade family.

Reproduces [LL17] Sec. 5.1 (Table 1, Figs. 6-7) on ``skimage.data.chelsea()`` (sigma in template
pixels), or with ``--setup paper`` on the paper's own image, the Caffe example ``cat.jpg`` that
ships with lkstn (the box of its Fig. 6, sigma in image pixels):

    python examples/planar_alignment.py --quick --out out/planar   # about a minute on 2 cores
    python examples/planar_alignment.py --quick --setup paper --out out/planar-paper
    python examples/planar_alignment.py --quick --out out/planar --resume   # again: re-evaluates
    python examples/planar_alignment.py --out runs/planar_full     # the full Table 1 (< 1 hour)

What it does, step by step (see :mod:`lkstn.experiments.planar` for the recipe):

1. cuts the 50 x 50 template out of the cat (:mod:`lkstn.experiments.planar_setup`) and draws
   affine starts around it with the paper's noise model (Fig. 6);
2. trains, for each sigma, an IC-STN whose geometric predictor is one linear layer, unfolded
   K = 1 (c-STN-1), 2, 3, 4, 6 times, on the L2 loss between its final warp and the truth;
3. runs every network, and LK, compositional LK, IC-LK and SDM, on one fixed test set for more
   warps than the networks were trained with, and plots the error after each warp (Fig. 7);
4. writes ``table1.md`` (ours beside the paper's published values), ``planar.json`` and the PNGs.

Interrupted? Run the same command again: finished trainings are loaded from ``OUT/runs``.
"""

from __future__ import annotations

import argparse
import sys

from lkstn.experiments import planar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    planar.add_arguments(parser)
    args = parser.parse_args(argv)
    return planar.run(args)


if __name__ == "__main__":
    sys.exit(main())
