"""Reading a user's image files with scikit-image's conventions.

Every image becomes floats in ``[0, 1]`` through :func:`skimage.util.img_as_float` (8-bit
divided by 255, 16-bit by 65535, floats kept), so a template and an image of different bit
depths compare on one scale. An RGBA file's alpha channel becomes a *mask* (template weights in
``[0, 1]``, 0 ignores a pixel) returned beside the pixels. The size is checked from the file's
header before any pixel is decoded, so a small file that declares a huge image is refused
without allocating it.

Glossary: ``name`` how an error names the file (``TEMPLATE``, ``IMAGE``, ``FRAME 3``),
``max_pixels`` the largest ``height * width`` accepted, ``mask`` ``(h, w)`` weights or None.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["MAX_PIXELS", "grey", "image_size", "read_image"]

MAX_PIXELS = 50_000_000
"""Default pixel limit (``height * width``): 50 Mpx is 1.2 GB as float64 RGB."""

_TIFF = (".tif", ".tiff")

LUMA = (0.2125, 0.7154, 0.0721)
"""ITU-R 709 luma weights of R, G, B: those of :func:`skimage.color.rgb2gray`."""


def grey(image: np.ndarray) -> np.ndarray:
    """Grey levels of a float RGB image ``(..., 3)`` (a grey ``(h, w)`` image is returned as is).

    The weighted sum of :func:`skimage.color.rgb2gray` (:data:`LUMA`), written here because
    importing :mod:`skimage.color` imports SciPy's special functions, about a quarter of a
    second, more than a whole alignment of a 128 px template.

    Examples
    --------
    >>> float(grey(np.ones((2, 2, 3)))[0, 0])
    1.0
    """
    if image.ndim == 2:
        return image
    return image @ np.asarray(LUMA, dtype=image.dtype)


def image_size(path: str | Path, *, name: str = "image") -> tuple[int, int]:
    """``(height, width)`` of an image file, read from its header without decoding pixels.

    TIFF files are measured with ``tifffile`` (the first page), every other format with PIL
    (``Image.open`` reads only the header).

    Raises
    ------
    ValueError
        Naming ``name`` and the file, for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no such file: {path}")
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
                axes = tif.pages[0].axes
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with warnings.catch_warnings():  # our own max_pixels replaces PIL's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    width, height = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        return int(height), int(width)
    except Exception as exc:  # PIL and tifffile raise many kinds
        raise ValueError(f"{name}: cannot read {path} as an image ({type(exc).__name__})") from None


_PIL_MODES = {"L": None, "LA": None, "RGB": None, "RGBA": None, "I;16": np.uint16, "P": None}


def _decode(path: Path) -> np.ndarray:
    """Pixels as stored (uint8, uint16, float): tifffile for TIFF, PIL for the common 8-bit and
    16-bit grey modes (``skimage.io.imread`` decodes them through the same libraries, but its
    import costs a quarter of a second), ``skimage.io.imread`` for anything else."""
    if path.suffix.lower() in _TIFF:
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in _PIL_MODES:
            if im.mode == "P":  # a palette: its colours (and transparency) as RGB(A)
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return np.asarray(im, dtype=_PIL_MODES.get(im.mode))
    from skimage import io

    return np.asarray(io.imread(path))


def read_image(
    path: str | Path,
    *,
    name: str = "image",
    as_grey: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an image file as floats in ``[0, 1]`` and its alpha as a mask.

    Parameters
    ----------
    path : str or Path
        PNG, JPEG, TIFF, ... (anything scikit-image reads); 8-bit, 16-bit or float; grey,
        RGB or RGBA.
    name : str
        How errors name the file.
    as_grey : bool
        Convert RGB to grey (:func:`grey`: ITU-R 709 luma, as :func:`skimage.color.rgb2gray`);
        False keeps the colour channels, ``(h, w, 3)``.
    max_pixels : int
        Refuse files declaring more than this many pixels (checked before decoding).

    Returns
    -------
    image : ndarray, shape (h, w) or (h, w, 3), float64 in [0, 1]
    mask : ndarray, shape (h, w), float64 in [0, 1], or None
        The alpha channel of an RGBA (or grey + alpha) file; None without one.

    Raises
    ------
    ValueError
        One line naming ``name`` and the file: missing, unreadable, too large, or not a 2-D
        image of at least 4x4 pixels.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from skimage import io
    >>> path = tempfile.mkdtemp() + "/a.png"
    >>> io.imsave(path, np.full((8, 8), 65535, np.uint16), check_contrast=False)
    >>> image, mask = read_image(path)
    >>> float(image.max()), mask is None
    (1.0, True)
    """
    from skimage.util import img_as_float

    height, width = image_size(path, name=name)
    if height * width > max_pixels:
        raise ValueError(
            f"{name}: {path} declares {width}x{height} pixels, over the limit of {max_pixels}"
        )
    try:
        img = _decode(Path(path))
    except Exception as exc:  # imageio/PIL/tifffile raise many kinds
        raise ValueError(f"{name}: cannot read {path} as an image ({type(exc).__name__})") from None
    if img.dtype == bool or img.dtype.kind not in "uif":
        raise ValueError(f"{name}: {path} has pixels of type {img.dtype}, not numbers")
    img = img_as_float(img).astype(np.float64)  # 8-bit / 255, 16-bit / 65535, floats kept
    mask = None
    if img.ndim == 3 and img.shape[-1] in (2, 4):  # grey + alpha, RGBA
        img, mask = img[..., :-1], np.clip(img[..., -1], 0.0, 1.0)
        if img.shape[-1] == 1:
            img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3 and as_grey:
        img = grey(img)
    ok_channels = img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)
    if not ok_channels or min(img.shape[:2]) < 4:
        raise ValueError(f"{name}: {path}: expected a 2-D image of at least 4x4, got {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError(f"{name}: {path} holds non-finite pixels")
    return img, mask
