"""Sample data shipped with pacarray.

The files live next to this module and are read with Pillow; scikit-image is not needed at run
time. See ``README.md`` in this folder for the source and licence of each file.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

__all__ = ["sample_image"]

_SAMPLE_FILE = "astronaut.png"


@functools.lru_cache(maxsize=1)
def _load_sample() -> np.ndarray:
    from PIL import Image

    with resources.files(__name__).joinpath(_SAMPLE_FILE).open("rb") as handle:
        with Image.open(handle) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    # The cached array is shared between callers; read-only keeps one caller from
    # silently changing what the next one gets.
    array.setflags(write=False)
    return array


def sample_image() -> np.ndarray:
    """Colour photograph of astronaut Eileen Collins (NASA, public domain).

    Returns
    -------
    image : (512, 512, 3) uint8 ndarray
        RGB image, channels last. The array is cached and read-only; use ``.copy()`` to get a
        writable one.

    Notes
    -----
    The photograph comes from NASA's Great Images collection and carries no known copyright
    restrictions; the same image ships with scikit-image as ``skimage.data.astronaut``.

    Examples
    --------
    >>> from pacarray.data import sample_image
    >>> image = sample_image()
    >>> image.shape, image.dtype
    ((512, 512, 3), dtype('uint8'))
    """
    return _load_sample()
