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


def test_pillow_overlay_draws_the_boxes_where_the_matrices_put_them(tmp_path):
    """The Pillow overlay (what ``lkstn align`` writes): four panels side by side, the result
    box in its colour along the template's outline in the image panel, the start box too."""
    from PIL import Image

    from lkstn.overlay import RESULT_COLOUR, START_COLOUR, overlay_image

    image = np.full((200, 300), 0.5)
    image[::7] = 0.2  # some texture for the percentiles
    template = image[40:120, 100:180]
    H = np.array([[1.0, 0.0, 100.0], [0.0, 1.0, 40.0], [0.0, 0.0, 1.0]])
    H_init = H + [[0, 0, -30], [0, 0, 25], [0, 0, 0]]
    out = overlay_image(image, template, H, H_init, title="a title", height=200)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[0] > 200
    scale = 200 / image.shape[0]  # the image panel is 200 px high, 8 px in from the left

    def pixel(x, y):  # an image pixel's colour in the overlay
        head = out.shape[0] - 200 - 8
        return tuple(out[round(head + (y + 0.5) * scale - 0.5), round(8 + (x + 0.5) * scale - 0.5)])

    assert pixel(140, 40) == RESULT_COLOUR  # middle of the result box's top edge
    assert pixel(140, 60) != RESULT_COLOUR  # inside the box: the image
    left_edge = [pixel(70, y) for y in range(70, 140)]  # the start box's dashed left edge
    assert START_COLOUR in left_edge and any(c != START_COLOUR for c in left_edge)
    save_overlay(tmp_path / "o.png", image, template, H, H_init)
    assert Image.open(tmp_path / "o.png").size[0] > 600  # four panels


def test_pillow_overlay_of_a_failed_alignment_draws_what_it_can():
    """A matrix that is not finite, singular or far away (a failed alignment) gives a black
    registered panel and no result box, never an error: the overlay is written whatever the
    alignment did."""
    from lkstn.overlay import RESULT_COLOUR, overlay_image

    image = np.random.default_rng(0).random((60, 80))
    far = np.array([[1.0, 0.0, 1e9], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    def result_pixels(H):  # in the left half of the image panel (the legend is top right)
        out = overlay_image(image, image[10:30, 20:40], H, np.eye(3), height=100)
        return (out[:, 8:68] == RESULT_COLOUR).all(-1).sum()

    assert result_pixels(np.eye(3)) > 50  # the box at the image's top-left corner
    for H in (np.full((3, 3), np.nan), np.zeros((3, 3)), far):
        assert result_pixels(H) == 0


def test_block_mean_and_shrink_factor():
    from lkstn.overlay import block_mean, shrink_factor

    rng = np.random.default_rng(1)
    picture = rng.random((23, 17, 3))
    out = block_mean(picture, 4)
    assert out.shape == (5, 4, 3)  # the last 3 rows and 1 column (fewer than 4) left out
    expected = [[picture[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean((0, 1)) for j in range(4)]
                for i in range(5)]  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert block_mean(picture, 1) is picture
    assert [shrink_factor(s, 3200) for s in [(100, 50), (3200, 10), (3201, 10), (10, 9600)]] == [
        1, 1, 2, 3,
    ]  # fmt: skip


def test_a_large_image_is_shown_from_block_means_with_the_box_in_place():
    """An image longer than twice its panel is averaged over blocks before it is stretched and
    drawn (a 4000 px photograph shown 200 px high), and the result box lands where the pixel
    matrix puts it, as on a small image."""
    from lkstn.overlay import MAX_WIDTH, RESULT_COLOUR, overlay_image, panels

    side = 2 * MAX_WIDTH + 800  # a factor of 2
    image = np.full((side, side), 0.5)
    image[::9] = 0.2
    template = image[:80, :80]
    H = np.array([[1.0, 0.0, 2400.0], [0.0, 1.0, 1000.0], [0.0, 0.0, 1.0]])
    shown = panels(image, template, H, most=2 * MAX_WIDTH)
    assert shown[0][0].shape == (side // 2, side // 2) and shown[1][0].shape == (80, 80)
    out = overlay_image(image, template, H, height=200)
    scale = 200 / side  # the image panel: 200 px high, 8 px in from the left

    def pixel(x, y):
        head = out.shape[0] - 200 - 8
        return tuple(out[round(head + (y + 0.5) * scale - 0.5), round(8 + (x + 0.5) * scale - 0.5)])

    assert pixel(2400, 1040) == RESULT_COLOUR  # the middle of the box's left edge
    assert pixel(2400, 1400) != RESULT_COLOUR


def test_a_large_template_is_registered_onto_the_centres_of_its_blocks():
    """A template longer than ``most`` is shown from block means, and the image is registered
    onto the centres of those blocks only (not at full size, then averaged): the registered
    panel is the template's panel where ``H`` is where the template was cut."""
    from scipy import ndimage

    from lkstn.overlay import panels

    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.random((2400, 2400)), 3.0)
    template = image[300:1500, 400:1600]  # 1200 px, cut at (400, 300)
    H = np.array([[1.0, 0.0, 400.0], [0.0, 1.0, 300.0], [0.0, 0.0, 1.0]])
    shown = {name: picture for picture, name in panels(image, template, H, most=600)}
    assert shown["image"].shape == (600, 600) and shown["template"].shape == (600, 600)
    assert shown["image registered"].shape == (600, 600)
    # block means against samples at the blocks' centres: the same picture, a little smoother
    r = np.corrcoef(shown["image registered"].ravel(), shown["template"].ravel())[0, 1]
    assert r > 0.98, r
