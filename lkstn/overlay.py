"""The overlay of an alignment, drawn with Pillow: the picture ``lkstn align`` and ``lkstn track``
write.

Four panels on one row: the image (in colour if it has colour) with the start box (dashed,
orange) and the result box (solid, cyan) and a legend; the template; the image registered onto
the template; a checkerboard of template and registered image (edges run on across the tiles
where the alignment is right). :func:`lkstn.viz.plot_overlay` draws the same panels as a
matplotlib figure for notebooks; Pillow (which scikit-image already needs) draws this one in a
few milliseconds, without matplotlib's import and rendering (most of a second), which would be
more than the alignment itself. A picture longer than twice its panel is averaged over blocks
first (:func:`block_mean`), and the image is registered onto the centres of the template's
blocks only: a large photograph or template is never warped, stretched and converted at full
size (``benchmarks/align_command.py --tile 12``, ``--upscale 6 --side 1024``).

Glossary: ``H``, ``H_init`` pixel matrices mapping template pixels to image pixels
(:mod:`lkstn.pixels`), ``panel`` one picture of the row, ``height`` its height in pixels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "block_mean",
    "checkerboard",
    "display",
    "outline",
    "overlay_image",
    "panels",
    "save_overlay",
    "shrink_factor",
]

START_COLOUR, RESULT_COLOUR = (255, 165, 0), (0, 230, 230)  # orange dashed, cyan solid
MAX_WIDTH = 1600
"""Widest overlay (pixels): the panels shrink to fit, whatever the image's shape."""


def display(image: np.ndarray) -> np.ndarray:
    """Grey or RGB in ``[0, 1]`` for display, stretched to its 1st-99th percentiles (of at most
    a quarter million evenly spread values: a large image's percentiles to display precision;
    ``np.percentile`` would import ``numpy.ma``, 15 ms)."""
    image = np.asarray(image, dtype=float)
    values = np.sort(image.reshape(-1)[:: max(1, image.size // 250_000)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros_like(image)
    lo, hi = np.interp([0.01 * (values.size - 1), 0.99 * (values.size - 1)],
                       np.arange(values.size), values)  # fmt: skip
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)


def checkerboard(a: np.ndarray, b: np.ndarray, n_tiles: int = 6) -> np.ndarray:
    """Tiles taken alternately from two equal-shaped images (``a`` in the top-left)."""
    h, w = a.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    size = max(1, int(np.ceil(max(h, w) / n_tiles)))
    pick_a = ((yy // size + xx // size) % 2 == 0).reshape(h, w, *([1] * (a.ndim - 2)))
    return np.where(pick_a, a, b)


def outline(H: npt.ArrayLike, template_shape: tuple[int, int]) -> np.ndarray:
    """The template's corner pixels moved by the pixel matrix ``H``, ``(4, 2)`` as ``(x, y)``."""
    h, w = template_shape
    c = np.array(
        [[0.0, 0.0, 1.0], [w - 1.0, 0.0, 1.0], [w - 1.0, h - 1.0, 1.0], [0.0, h - 1.0, 1.0]]
    )
    m = c @ np.asarray(H, dtype=float).T  # (4, 3)
    with np.errstate(divide="ignore", invalid="ignore"):  # a singular H: non-finite corners
        return m[:, :2] / m[:, 2:]


def panels(
    image: np.ndarray, template: np.ndarray, H: npt.ArrayLike, *, most: int | None = None
) -> list[tuple[np.ndarray, str]]:
    """The four panels, each in ``[0, 1]`` with its name: image, template, image registered
    onto the template at ``H`` (black where ``H`` is not a usable matrix), checkerboard of the
    two (grey). With ``most``, a picture longer than that is first averaged over blocks of
    ``shrink_factor(shape, most)`` pixels a side (a 6000 px photograph shown 400 px wide need
    not be stretched and converted at full size), and the image is registered onto the
    centres of the template's blocks only (sampled from the whole image)."""
    from lkstn.pixels import warp_image_pixels

    whole, template = np.asarray(image, dtype=float), np.asarray(template, dtype=float)
    k = 1 if most is None else shrink_factor(template.shape, most)
    image = whole if most is None else block_mean(whole, shrink_factor(whole.shape, most))
    template = block_mean(template, k)  # block centres at k u + (k - 1) / 2 template pixels
    to_blocks = np.array([[k, 0.0, (k - 1) / 2], [0.0, k, (k - 1) / 2], [0.0, 0.0, 1.0]])
    grey = template if template.ndim == 2 else template.mean(-1)
    try:
        registered = warp_image_pixels(whole, np.asarray(H, dtype=float) @ to_blocks, grey.shape)
    except ValueError:  # a failed alignment's matrix (not finite, or singular): a black panel
        registered = np.zeros((*grey.shape, *whole.shape[2:]))
    reg_grey = registered if registered.ndim == 2 else registered.mean(-1)
    return [
        (display(image), "image"),
        (display(template), "template"),
        (display(registered), "image registered"),
        (checkerboard(display(grey), display(reg_grey)), "checkerboard"),
    ]


def shrink_factor(shape: tuple[int, ...], most: int) -> int:
    """The smallest whole number of pixels per block that brings the longer side of ``shape``
    (its first two numbers) to at most ``most`` blocks."""
    return max(1, -(-max(shape[0], shape[1]) // max(int(most), 1)))


def block_mean(picture: np.ndarray, k: int) -> np.ndarray:
    """``picture`` ``(H, W[, C])`` averaged over ``k x k`` blocks, ``(H // k, W // k[, C])``:
    the last ``H % k`` rows and ``W % k`` columns (fewer than ``k``) are left out. Works on
    views of the picture (no full-size copy)."""
    if k == 1:
        return picture
    h, w = picture.shape[0] // k, picture.shape[1] // k
    rows = picture[: h * k].reshape(h, k, *picture.shape[1:])[:, :, : w * k]
    return rows.reshape(h, k, w, k, *picture.shape[2:]).mean(axis=(1, 3))


def overlay_image(
    image: np.ndarray,
    template: np.ndarray,
    H: npt.ArrayLike,
    H_init: npt.ArrayLike | None = None,
    *,
    title: str | None = None,
    height: int = 300,
) -> np.ndarray:
    """The overlay as an RGB picture, ``(rows, cols, 3)`` uint8.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, 3), floats
    template : ndarray (h, w) or (h, w, 3), floats
    H, H_init : (3, 3) pixel matrices of the result and the start (None: no start box)
    title : str, optional
        A line above the panels.
    height : int
        Panel height in pixels (smaller where the row would be wider than :data:`MAX_WIDTH`).

    Examples
    --------
    >>> image = np.random.default_rng(0).random((60, 80))
    >>> H = np.array([[1.0, 0.0, 20.0], [0.0, 1.0, 10.0], [0.0, 0.0, 1.0]])
    >>> out = overlay_image(image, image[10:30, 20:40], H)
    >>> out.dtype, out.shape[2]
    (dtype('uint8'), 3)
    """
    from PIL import Image, ImageDraw

    (ih, iw), (th, tw) = np.shape(image)[:2], np.shape(template)[:2]
    ratios = [iw / ih] + [tw / th] * 3
    gap, top = 8, 20
    height = int(max(32, min(height, (MAX_WIDTH - gap * 5) / sum(ratios))))
    most = 2 * max(height, round(height * max(ratios)))  # twice the longest side of a panel
    shown = panels(image, template, H, most=most)
    k = shrink_factor(np.shape(image), most)  # image pixels per pixel of the first panel
    ratios = [p.shape[1] / p.shape[0] for p, _ in shown]
    font = _font(13)
    head = top + (top if title else 0)
    widths = [max(1, round(height * r)) for r in ratios]
    canvas = Image.new("RGB", (sum(widths) + gap * 5, head + height + gap), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 4), title, fill="black", font=font)
    x = gap
    for (picture, name), width in zip(shown, widths, strict=True):
        canvas.paste(_resized(picture, width, height), (x, head))
        draw.text((x, head - top + 3), name, fill="black", font=font)
        x += width + gap
    shown_h, shown_w = shown[0][0].shape[:2]  # the panel covers k * shown_w image columns
    scale = np.array([widths[0] / (k * shown_w), height / (k * shown_h)])

    def to_panel(corners: np.ndarray) -> list[tuple[float, float]] | None:
        xy = (corners + 0.5) * scale - 0.5 + [gap, head]  # pixel centres, resized
        if not (np.all(np.isfinite(xy)) and np.all(np.abs(xy) < 1e5)):  # nothing to draw
            return None
        return [(float(u), float(v)) for u, v in xy]

    start = None if H_init is None else to_panel(outline(H_init, (th, tw)))
    if start is not None:
        _dashed(draw, start, START_COLOUR, width=2)
    corners = to_panel(outline(H, (th, tw)))
    if corners is not None:
        draw.line([*corners, corners[0]], fill=RESULT_COLOUR, width=2, joint="curve")
    _legend(draw, font, (gap + widths[0] - 4, head + 4), with_start=H_init is not None)
    return np.asarray(canvas)


def save_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    template: np.ndarray,
    H: npt.ArrayLike,
    H_init: npt.ArrayLike | None = None,
    *,
    title: str | None = None,
) -> None:
    """Write :func:`overlay_image` to ``path`` (PNG, JPEG, ...: any format Pillow writes)."""
    from PIL import Image

    picture = Image.fromarray(overlay_image(image, template, H, H_init, title=title))
    picture.save(path, compress_level=1)  # PNG: a fast zlib level (ignored by other formats)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
    except (TypeError, OSError, ImportError):  # an old Pillow, or none: the bitmap font
        return ImageFont.load_default()


def _resized(picture: np.ndarray, width: int, height: int) -> Any:
    from PIL import Image

    rgb = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, -1)
    im = Image.fromarray(np.round(np.nan_to_num(rgb) * 255).astype(np.uint8))
    grow = width >= im.width and height >= im.height  # enlarged: pixels stay visible squares
    return im.resize((width, height), Image.Resampling.NEAREST if grow else Image.Resampling.BOX)


def _dashed(draw, points, colour, *, width: int, on=7.0, off=5.0, closed=True) -> None:
    ends = points[1:] + points[:1] if closed else points[1:]
    for (x0, y0), (x1, y1) in zip(points, ends, strict=False):
        length = float(np.hypot(x1 - x0, y1 - y0))
        for s in np.arange(0.0, length, on + off):
            a, b = s / max(length, 1e-9), min(s + on, length) / max(length, 1e-9)
            start = (x0 + a * (x1 - x0), y0 + a * (y1 - y0))
            draw.line([start, (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=colour, width=width)


def _legend(draw, font, top_right: tuple[int, int], *, with_start: bool) -> None:
    entries = ([("start", START_COLOUR, True)] if with_start else []) + [
        ("result", RESULT_COLOUR, False)
    ]
    row, line = 16, 22
    text_w = max(draw.textlength(name, font=font) for name, _, _ in entries)
    w, h = line + 10 + text_w + 8, row * len(entries) + 6
    x1, y0 = top_right
    x0 = x1 - w
    draw.rectangle([x0, y0, x1, y0 + h], fill=(255, 255, 255), outline=(120, 120, 120))
    for k, (name, colour, dashed) in enumerate(entries):
        y = y0 + 4 + k * row + row / 2
        segment = [(x0 + 5, y), (x0 + 5 + line, y)]
        if dashed:
            _dashed(draw, segment, colour, width=2, on=6, off=4, closed=False)
        else:
            draw.line(segment, fill=colour, width=2)
        draw.text((x0 + line + 12, y - 8), name, fill="black", font=font)
