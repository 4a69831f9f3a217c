"""The overlay a person reads: four panels, boxes with a legend, a capped figure size."""

import numpy as np
from skimage import data

from lkstn.viz import MAX_FIGSIZE, checkerboard, plot_overlay, save_overlay


def test_overlay_panels_legend_and_size_cap(tmp_path):
    image = np.tile(data.astronaut() / 255.0, (6, 1, 1))  # (3072, 512, 3): tall, 4.7 Mpx
    template = image[100:164, 200:264].mean(-1)
    H = np.array([[1.0, 0.0, 200.0], [0.0, 1.0, 100.0], [0.0, 0.0, 1.0]])
    fig = plot_overlay(image, template, H, H + [[0, 0, 5], [0, 0, -3], [0, 0, 0]], title="t")
    w, h = fig.get_size_inches()
    assert w <= MAX_FIGSIZE[0] + 1e-9 and h <= MAX_FIGSIZE[1] + 0.6 + 1e-9
    axes = fig.axes
    assert len(axes) == 4
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["start", "result"]
    # the registered panel is the template itself here (H is where it was cut); each panel is
    # stretched to its own percentiles (clipped at 1 % and 99 %), so compare by correlation
    registered = np.asarray(axes[2].images[0].get_array()).mean(-1)
    shown_template = np.asarray(axes[1].images[0].get_array())
    assert np.corrcoef(registered.ravel(), shown_template.ravel())[0, 1] > 0.99
    save_overlay(tmp_path / "o.png", image, template, H)
    assert (tmp_path / "o.png").stat().st_size > 10_000


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((12, 12)), np.ones((12, 12))
    c = checkerboard(a, b, n_tiles=2)
    assert c[0, 0] == 0 and c[0, 11] == 1 and c[11, 0] == 1 and c[11, 11] == 0
