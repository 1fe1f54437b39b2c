"""The ``pacarray`` command line: pacarray's filters applied to image files.

``pacarray COMMAND ...`` (or ``python -m pacarray COMMAND ...``) with the commands

* ``bilateral IN OUT``: :func:`pacarray.bilateral_filter` (joint with ``--guide``);
* ``upsample LOW GUIDE OUT``: :func:`pacarray.joint_bilateral_upsample`;
* ``fill IN [CERTAINTY] OUT``: :func:`pacarray.normalized_convolution`;
* ``dpp IN OUT``: :func:`pacarray.detail_preserving_pool`;
* ``crf IMAGE UNARY OUT``: :func:`pacarray.pac_crf` with ``output="labels"``;
* ``info``: versions, backends, Numba threading and cache;
* ``bench [ARGS...]``: ``python -m pacarray.benchmarks ARGS...``;
* ``demo``: the bundled bilateral denoising demo.

Image files
-----------
PNG and JPEG are read and written with Pillow, TIFF with tifffile, ``.npy`` with NumPy. TIFF
does not go through Pillow because Pillow cannot write float32 images with several channels
reliably (its float mode holds one channel, its colour modes 8 bits per channel) and sees one
page at a time, whereas tifffile round-trips every dtype, any number of channels and multi-page
stacks. Pillow reads a 16-bit colour PNG as 8 bits per channel; such files are refused with a
hint (convert them to TIFF) instead of being silently reduced.

A grayscale image is an ``(H, W)`` array and a colour image ``(H, W, C)``, channels last
(``channel_axis=-1``). A multi-page TIFF is a volume, ``(D, H, W)`` or ``(D, H, W, C)``: its
pages are the slices (tifffile's page axes ``Q``, ``I``, ``Z`` or ``T``; an ImageJ ``ZCYX``
hyperstack gets its channels moved last), and every command filters it in 3-D (docs/design.md
§7); a volume is written as a multi-page TIFF or a 4-D/3-D ``.npy``, never as PNG or JPEG. A
stack with two page axes (``TZYX``) is refused. A ``.npy`` file is always one 2-D image. By
default the output has the input's dtype: integer results are rounded and clipped to the
dtype's range. ``--dtype float32`` (or ``float64``) keeps the floating result, which only TIFF
and ``.npy`` can hold; PNG holds uint8 (1-4 channels) and uint16 grayscale, JPEG uint8
grayscale or RGB.

Units
-----
Sigmas and other intensities are in the image's own units, as the library takes them: for a
uint8 image ``--sigma-color 25`` is about 0.1 of the range (25 / 255), for a uint16 image 0.1 is
about 6554, a float image uses its values as they are. Spatial sigmas are in pixels.

Exit status
-----------
0 on success; 2 for a usage error (unknown option, bad number, unknown extension, an output
format that cannot hold the result); 1 when the work fails (missing or unreadable file, data
the library rejects). Errors are one line on stderr, ``pacarray COMMAND: error: ...``, without a
traceback.

Progress
--------
Images above about 4 megapixels (volumes above 4 million voxels), or any with ``--verbose``,
get a status line on stderr, ``filtering 4096x4096x3 ... 25% 50% 75% 100% done in 1.2 s``
(width x height x channels; ``filtering 256x256x40 volume ...`` for a volume of 40 slices);
``--quiet`` silences it. The percentages come from :func:`pacarray.progress`, which computes a
big input in blocks (when Dask is installed; ``pac_crf`` runs uncut and shows none).

Importing this module is cheap: NumPy, Pillow, tifffile, Numba and CuPy are imported by the
commands that need them, so ``pacarray --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROG = "pacarray"

#: File extension -> format name.
EXTENSIONS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".npy": "NPY",
}

#: tifffile's names of an axis of pages: generic (Q), image sequence (I), depth (Z), time (T).
_PAGE_AXES = "QIZT"

#: Above this many pixels a status line is printed without ``--verbose``.
PROGRESS_PIXELS = 4_000_000

_EXTENSION_LIST = ".png, .tif, .tiff, .jpg, .jpeg or .npy"


class UsageError(Exception):
    """The command line asks for something impossible (exit status 2)."""


class CommandFailure(Exception):
    """The command could not do its work: a file, the data (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse with the error on the first line of stderr and a pointer to ``--help``.

    argparse prints the usage first; the usage of these commands spans several lines, which
    would push the one line that matters out of sight.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\nTry '{self.prog} --help' for more "
                     "information.\n")


# --------------------------------------------------------------------------- argument types

def _image_path(text: str) -> Path:
    """Argument type of image files: the extension decides the format."""
    path = Path(text)
    if path.suffix.lower() not in EXTENSIONS:
        what = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise argparse.ArgumentTypeError(
            f"unknown image file type ({what}) in {text!r}: use {_EXTENSION_LIST}")
    return path


def _npy_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".npy":
        raise argparse.ArgumentTypeError(f"expected a .npy file, got {text!r}")
    return path


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return value


def _finite(text: str) -> float:
    value = _number(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer {what}, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    return _integer(text, 0, ">= 0")


def _positive_int(text: str) -> int:
    return _integer(text, 1, ">= 1")


def _odd_size(text: str) -> int:
    value = _integer(text, 1, ">= 1")
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd, got {text!r}")
    return value


def _factor(text: str) -> int | tuple[int, ...]:
    """``4``, ``4,2`` / ``4x2`` (rows, columns) or ``2,4,4`` (slices, rows, columns)."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) not in (1, 2, 3):
        raise argparse.ArgumentTypeError(f"expected F, FY,FX or FZ,FY,FX, got {text!r}")
    values = [_integer(part, 1, ">= 1 (F, FY,FX or FZ,FY,FX)") for part in parts]
    return values[0] if len(values) == 1 else tuple(values)


def _spacing(text: str) -> tuple[float, ...]:
    """``Y,X`` or ``Z,Y,X`` positive voxel sizes (``0.5x0.1x0.1`` too)."""
    parts = text.lower().replace("x", ",").split(",")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected SY,SX or SZ,SY,SX, got {text!r}")
    return tuple(_positive(part) for part in parts)


# --------------------------------------------------------------------------- image files

def _format(path: Path) -> str:
    return EXTENSIONS[path.suffix.lower()]


def read_image(path: Path, what: str = "image"):
    """Read an image file into an ``(H, W)`` or ``(H, W, C)`` array of its stored dtype.

    Parameters
    ----------
    path : Path
        A ``.png``, ``.tif``/``.tiff``, ``.jpg``/``.jpeg`` or ``.npy`` file.
    what : str
        Name of the file in error messages (``"IN"``, ``"guide"``...).

    Returns
    -------
    ndarray
        Native byte order; bool arrays become uint8 (0 and 1).

    Raises
    ------
    CommandFailure
        The file is missing, unreadable or not a single 2-D image (a volume included).
    """
    array, spatial_ndim = read_data(path, what)
    if spatial_ndim != 2:
        raise CommandFailure(f"{what} '{path}' is a volume of shape {array.shape}: expected a "
                             "2-D image, (H, W) or (H, W, C)")
    return array


def read_data(path: Path, what: str = "image"):
    """Read an image or a volume file into an array of its stored dtype.

    Parameters
    ----------
    path : Path
        A ``.png``, ``.tif``/``.tiff``, ``.jpg``/``.jpeg`` or ``.npy`` file.
    what : str
        Name of the file in error messages (``"IN"``, ``"guide"``...).

    Returns
    -------
    array : ndarray
        ``(H, W)`` or ``(H, W, C)`` for an image, ``(D, H, W)`` or ``(D, H, W, C)`` for a
        multi-page TIFF; native byte order, bool arrays become uint8 (0 and 1).
    spatial_ndim : int
        2 for an image, 3 for a volume.

    Raises
    ------
    CommandFailure
        The file is missing, unreadable, or neither one image nor one volume.
    """
    import numpy as np

    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file"
        raise CommandFailure(f"cannot read {what} '{path}': {reason}")
    kind = _format(path)
    spatial_ndim = 2
    try:
        if kind == "TIFF":
            array, spatial_ndim = _read_tiff(path)
        elif kind == "NPY":
            array = np.load(path, allow_pickle=False)
        else:
            array = _read_pillow(path)
    except CommandFailure as error:
        raise CommandFailure(f"cannot read {what} '{path}': {error}") from None
    except Exception as error:  # noqa: BLE001 - a damaged file can raise anything
        raise CommandFailure(f"cannot read {what} '{path}' as {kind}: "
                             f"{error or type(error).__name__}") from None
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "uif":
        raise CommandFailure(f"{what} '{path}' holds {array.dtype} data, not numbers")
    if array.ndim not in (spatial_ndim, spatial_ndim + 1) or array.size == 0:
        raise CommandFailure(f"{what} '{path}' has shape {array.shape}: expected a 2-D image, "
                             "(H, W) or (H, W, C), or a multi-page TIFF volume")
    return array.astype(array.dtype.newbyteorder("="), copy=False), spatial_ndim


def _read_tiff(path: Path):
    import numpy as np
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        axes = series.axes
        array = series.asarray()
    # tifffile drops axes of length 1, so a one-page file is an image whatever its metadata.
    if axes in ("YX", "YXS"):
        return array, 2
    if len(axes) == 3 and axes.endswith("YX") and axes[0] in "SC":
        # Planar colour or an ImageJ channel stack: one image, channels first on disk.
        return np.moveaxis(array, 0, -1), 2
    if len(axes) >= 3 and axes[0] in _PAGE_AXES and axes[1:] in ("YX", "YXS"):
        # The pages are the slices of a volume (docs/design.md §7).
        return array, 3
    if len(axes) == 4 and axes[0] in _PAGE_AXES and axes[1:] in ("CYX", "SYX"):
        # An ImageJ hyperstack or planar colour pages: channels first on disk.
        return np.moveaxis(array, 1, -1), 3
    raise CommandFailure(f"TIFF holds a stack of shape {series.shape} (axes '{axes}'); "
                         "pacarray's commands take one 2-D image, (H, W) or (H, W, C), or "
                         "one volume, (D, H, W) or (D, H, W, C)")


def _read_pillow(path: Path):
    import numpy as np
    from PIL import Image

    # The files are the user's own; a large scan is not a decompression bomb.
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as image:
        if image.format == "PNG":
            _refuse_16bit_colour_png(path)
        mode = image.mode
        if mode == "1":
            image = image.convert("L")
        elif mode in ("P", "PA"):
            image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info
                                  else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        return np.array(image)


def _refuse_16bit_colour_png(path: Path) -> None:
    # The IHDR chunk follows the 8-byte signature: length, type, width, height, bit depth,
    # colour type (2 RGB, 4 gray + alpha, 6 RGBA).
    with open(path, "rb") as file:
        header = file.read(26)
    if len(header) == 26 and header[24] == 16 and header[25] in (2, 4, 6):
        raise CommandFailure("16-bit colour PNG: Pillow would reduce it to 8 bits per channel; "
                             "convert it to a 16-bit TIFF first")


def check_writable(path: Path, dtype, shape, what: str = "OUT", forced: bool = False,
                   spatial_ndim: int = 2) -> None:
    """Raise :class:`UsageError` when ``path``'s format cannot hold ``dtype`` and ``shape``.

    Called before the computation, so that a wrong output name costs nothing.
    ``forced`` says that ``--dtype`` chose the dtype (the hint then mentions it);
    ``spatial_ndim`` is 3 for a volume, which only TIFF and ``.npy`` hold.
    """
    import numpy as np

    dtype = np.dtype(dtype)
    kind = _format(path)
    if spatial_ndim == 3 and kind in ("PNG", "JPEG"):
        raise UsageError(f"{what} '{path}': {kind} holds one 2-D image, not a volume of "
                         f"{shape[0]} slices; write a .tif/.tiff (multi-page) or .npy file")
    channels = 1 if len(shape) == spatial_ndim else shape[-1]
    if kind == "PNG":
        fits = (dtype == np.uint8 and channels <= 4) or (dtype == np.uint16 and channels == 1)
        holds = "uint8 with 1-4 channels or uint16 grayscale"
    elif kind == "JPEG":
        fits = dtype == np.uint8 and channels in (1, 3)
        holds = "uint8 grayscale or RGB"
    else:
        return
    if not fits:
        hint = "write a .tif/.tiff or .npy file"
        if forced:
            hint += " or leave out --dtype"
        raise UsageError(f"{what} '{path}': {kind} holds {holds}, not {dtype} with {channels} "
                         f"channel{'s' if channels != 1 else ''}; {hint}")


def write_image(path: Path, array, what: str = "OUT", spatial_ndim: int = 2) -> None:
    """Write ``array`` in the format of ``path``'s extension.

    ``array`` is ``(H, W)`` or ``(H, W, C)``, or with ``spatial_ndim=3`` a volume
    ``(D, H, W)`` or ``(D, H, W, C)``, written as one TIFF page per slice.

    Raises
    ------
    CommandFailure
        The file cannot be written (missing directory, no permission, disk full).
    """
    try:
        _write(path, array, spatial_ndim)
    except OSError as error:
        raise CommandFailure(f"cannot write {what} '{path}': {error.strerror or error}") from None


def _write(path: Path, array, spatial_ndim: int = 2) -> None:
    import numpy as np

    kind = _format(path)
    if kind == "NPY":
        np.save(path, array)
        return
    if array.ndim == spatial_ndim + 1 and array.shape[-1] == 1:
        array = array[..., 0]
    if kind == "TIFF":
        import tifffile

        # A volume is a stack of such pages: tifffile writes one page per leading index.
        if array.ndim == spatial_ndim:
            tifffile.imwrite(path, array, photometric="minisblack")
        else:
            # Three or four channels are RGB(A) for every viewer; others are plain samples.
            photometric = "rgb" if array.shape[-1] in (3, 4) else "minisblack"
            tifffile.imwrite(path, array, photometric=photometric, planarconfig="contig")
        return
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    if kind == "JPEG":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG")


def to_dtype(result, dtype):
    """The result in the output dtype: integers rounded and clipped to the dtype's range."""
    import numpy as np

    dtype = np.dtype(dtype)
    result = np.asarray(result)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(result), info.min, info.max).astype(dtype)
    return result.astype(dtype, copy=False)


def _output_dtype(arguments, input_dtype):
    return input_dtype if arguments.dtype == "input" else arguments.dtype


def _describe(shape, spatial_ndim: int = 2) -> str:
    """``W x H x C`` as image tools print it; ``W x H x D volume`` (``, C channels``)."""
    if spatial_ndim == 3:
        depth, height, width = shape[:3]
        text = f"{width}x{height}x{depth} volume"
        return text + (f", {shape[3]} channels" if len(shape) == 4 else "")
    height, width = shape[:2]
    text = f"{width}x{height}"
    return text + (f"x{shape[2]}" if len(shape) == 3 else "")


# --------------------------------------------------------------------------- progress

class _Status:
    """The one-line progress report on stderr.

    A big input (above ``PROGRESS_PIXELS`` pixels or voxels) is computed inside
    :func:`pacarray.progress` when Dask is installed: cut into about 16 blocks, with the
    line growing by ``25% 50% 75% 100%`` as they finish. The cut depends on the size alone,
    not on ``--quiet``, so that the file written does not depend on what is printed.
    """

    def __init__(self, arguments, shape, spatial_ndim: int = 2):
        pixels = 1
        for size in shape[:spatial_ndim]:
            pixels *= size
        self.big = pixels > PROGRESS_PIXELS
        self.enabled = not arguments.quiet and (arguments.verbose or self.big)
        self.spatial_ndim = spatial_ndim
        self._shown = 0

    def _report(self, done: int, total: int, name: str) -> None:
        # Quarters rather than every block: the line stays short in a log file.
        quarter = 4 * done // max(total, 1)
        if self.enabled and quarter > self._shown:
            self._shown = quarter
            print(f"{25 * quarter}% ", end="", file=sys.stderr, flush=True)

    def _blocks(self):
        import contextlib
        import importlib.util

        if not self.big or importlib.util.find_spec("dask") is None:
            return contextlib.nullcontext()
        from ._progress import progress

        # min_size=1: the size test is ours (PROGRESS_PIXELS), made above.
        return progress(self._report, min_size=1)

    def run(self, what: str, compute):
        if self.enabled:
            print(f"{what} ... ", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            with self._blocks():
                result = compute()
        except BaseException:
            if self.enabled:
                print("failed", file=sys.stderr, flush=True)
            raise
        if self.enabled:
            print(f"done in {time.perf_counter() - start:.3g} s", file=sys.stderr, flush=True)
        return result

    def wrote(self, path: Path, array) -> None:
        if self.enabled:
            print(f"wrote {path} ({_describe(array.shape, self.spatial_ndim)} {array.dtype})",
                  file=sys.stderr)


def _channel_axis(array, spatial_ndim: int = 2):
    return -1 if array.ndim == spatial_ndim + 1 else None


def _same_kind(array, spatial_ndim: int, reference_ndim: int, what: str, reference: str):
    """Refuse a 2-D image where the command reads a volume, and the converse."""
    if spatial_ndim != reference_ndim:
        kinds = {2: "a 2-D image", 3: "a volume"}
        raise CommandFailure(f"{what} is {kinds[spatial_ndim]} of shape {array.shape} but "
                             f"{reference} is {kinds[reference_ndim]}: give both as images or "
                             "both as multi-page TIFF volumes")


# --------------------------------------------------------------------------- commands

def _run_bilateral(arguments) -> int:
    import numpy as np

    from .filters import bilateral_filter

    image, spatial = read_data(arguments.input, "IN")
    spacing = _checked_spacing(arguments.spacing, spatial)
    guide = None
    if arguments.guide is not None:
        guide, guide_spatial = read_data(arguments.guide, "guide")
        _same_kind(guide, guide_spatial, spatial, "guide", "IN")
    dtype = _output_dtype(arguments, image.dtype)
    check_writable(arguments.output, dtype, image.shape, forced=arguments.dtype != "input",
                   spatial_ndim=spatial)
    status = _Status(arguments, image.shape, spatial)
    result = status.run(
        f"filtering {_describe(image.shape, spatial)}",
        lambda: bilateral_filter(
            image, sigma_spatial=arguments.sigma_spatial, sigma_color=arguments.sigma_color,
            radius=arguments.radius, window=arguments.window,
            color_distance=arguments.color_distance, mode=arguments.mode, cval=arguments.cval,
            channel_axis=_channel_axis(image, spatial), guide=guide,
            spacing=spacing,
        ),
    )
    output = to_dtype(np.asarray(result), dtype)
    write_image(arguments.output, output, spatial_ndim=spatial)
    status.wrote(arguments.output, output)
    return 0


def _checked_spacing(spacing, spatial_ndim: int):
    if spacing is not None and len(spacing) != spatial_ndim:
        kind = "a volume" if spatial_ndim == 3 else "a 2-D image"
        raise UsageError(f"--spacing has {len(spacing)} values and IN is {kind}: give "
                         f"{spatial_ndim} values ({'SZ,SY,SX' if spatial_ndim == 3 else 'SY,SX'})")
    return spacing


def _run_upsample(arguments) -> int:
    import numpy as np

    from .filters import joint_bilateral_upsample

    low, spatial = read_data(arguments.low, "LOW")
    guide, guide_spatial = read_data(arguments.guide, "GUIDE")
    _same_kind(guide, guide_spatial, spatial, "GUIDE", "LOW")
    factor = arguments.factor
    if isinstance(factor, tuple) and len(factor) != spatial:
        raise UsageError(f"--factor has {len(factor)} values and LOW has {spatial} spatial "
                         f"axes: give one value or {spatial}")
    dtype = _output_dtype(arguments, low.dtype)
    shape = guide.shape[:spatial] + low.shape[spatial:]
    check_writable(arguments.output, dtype, shape, forced=arguments.dtype != "input",
                   spatial_ndim=spatial)
    status = _Status(arguments, shape, spatial)
    result = status.run(
        f"upsampling {_describe(low.shape, spatial)} to {_describe(shape, spatial)}",
        lambda: joint_bilateral_upsample(
            low, guide, factor=factor, sigma_spatial=arguments.sigma_spatial,
            sigma_color=arguments.sigma_color, radius=arguments.radius,
            channel_axis=_channel_axis(low, spatial),
        ),
    )
    output = to_dtype(np.asarray(result), dtype)
    write_image(arguments.output, output, spatial_ndim=spatial)
    status.wrote(arguments.output, output)
    return 0


def certainty_from_mask(mask, data_shape, spatial_ndim: int = 2):
    """Certainty in [0, 1] from a mask image: its values divided by its maximum.

    A 0/255 mask and a 0/1 mask both give 0/1; a graded mask keeps its gradation. A mask with
    the data's shape gives one certainty per channel; an ``(H, W)`` mask, or an ``(H, W, C)``
    mask whose channels are all equal, one for every channel (``(D, H, W)`` and
    ``(D, H, W, C)`` for a volume, ``spatial_ndim=3``).
    """
    import numpy as np

    if mask.shape[:spatial_ndim] != tuple(data_shape[:spatial_ndim]):
        sides = "depth, height and width" if spatial_ndim == 3 else "height and width"
        raise CommandFailure(f"CERTAINTY has shape {mask.shape}, IN {tuple(data_shape)}: the "
                             f"mask must have the image's {sides}")
    if mask.ndim == spatial_ndim + 1 and mask.shape != tuple(data_shape):
        if not np.all(mask == mask[..., :1]):
            channels = data_shape[-1] if len(data_shape) == spatial_ndim + 1 else 1
            raise CommandFailure(
                f"CERTAINTY has {mask.shape[-1]} different channels and IN {channels}: give a "
                "mask without channels or one channel per image channel")
        mask = mask[..., 0]
    mask = mask.astype(np.float64)
    if not np.all(np.isfinite(mask)) or mask.min() < 0:
        raise CommandFailure("CERTAINTY must hold finite values >= 0, got values in "
                             f"[{mask.min()}, {mask.max()}]")
    peak = mask.max()
    if peak == 0:
        raise CommandFailure("CERTAINTY is 0 everywhere: there is no pixel to fill from")
    return mask / peak


def certainty_from_value(data, value: float, spatial_ndim: int = 2):
    """Certainty 0 where a pixel is missing: every channel equals ``value`` (any NaN for NaN)."""
    import numpy as np

    if value != value:
        missing = np.isnan(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
        reduce = np.any
    else:
        missing = data == value
        reduce = np.all
    if data.ndim == spatial_ndim + 1:
        missing = reduce(missing, axis=-1)
    if missing.all():
        raise CommandFailure(f"every pixel of IN equals the missing value {value:g}: there is "
                             "no pixel to fill from")
    return (~missing).astype(np.float64)


def _run_fill(arguments) -> int:
    import numpy as np

    from .filters import normalized_convolution

    if (arguments.certainty is None) == (arguments.missing_value is None):
        raise UsageError("give a CERTAINTY mask file or --missing-value V"
                         + (", not both" if arguments.certainty is not None else ""))
    if (arguments.guide is None) != (arguments.sigma_color is None):
        raise UsageError("--guide and --sigma-color go together: the colour sigma is in the "
                         "guide's units")
    data, spatial = read_data(arguments.input, "IN")
    spacing = _checked_spacing(arguments.spacing, spatial)
    if arguments.certainty is not None:
        mask, mask_spatial = read_data(arguments.certainty, "CERTAINTY")
        _same_kind(mask, mask_spatial, spatial, "CERTAINTY", "IN")
        certainty = certainty_from_mask(mask, data.shape, spatial)
    else:
        certainty = certainty_from_value(data, arguments.missing_value, spatial)
    guide = None
    if arguments.guide is not None:
        guide, guide_spatial = read_data(arguments.guide, "guide")
        _same_kind(guide, guide_spatial, spatial, "guide", "IN")
    dtype = _output_dtype(arguments, data.dtype)
    check_writable(arguments.output, dtype, data.shape, forced=arguments.dtype != "input",
                   spatial_ndim=spatial)
    if arguments.certainty_out is not None:
        check_writable(arguments.certainty_out, _certainty_dtype(arguments.certainty_out),
                       certainty.shape, what="--certainty-out", spatial_ndim=spatial)
    if data.dtype.kind == "f":
        # Missing samples may be NaN or Inf in float files; they carry no weight, but
        # 0 * NaN would still poison the sums.
        unusable = ~np.isfinite(data) & ((certainty == 0) if certainty.ndim == data.ndim
                                         else (certainty == 0)[..., None])
        if unusable.any():
            data = np.where(unusable, data.dtype.type(0), data)
    status = _Status(arguments, data.shape, spatial)
    filled, confidence = status.run(
        f"filling {_describe(data.shape, spatial)}",
        lambda: normalized_convolution(
            data, certainty, sigma_spatial=arguments.sigma_spatial, radius=arguments.radius,
            guide=guide, sigma_color=arguments.sigma_color,
            channel_axis=_channel_axis(data, spatial), spacing=spacing,
        ),
    )
    output = to_dtype(np.asarray(filled), dtype)
    write_image(arguments.output, output, spatial_ndim=spatial)
    status.wrote(arguments.output, output)
    if arguments.certainty_out is not None:
        confidence = np.asarray(confidence)
        target = _certainty_dtype(arguments.certainty_out)
        confidence = (to_dtype(confidence * 255.0, target) if target == "uint8"
                      else to_dtype(confidence, target))
        write_image(arguments.certainty_out, confidence, "--certainty-out", spatial)
        status.wrote(arguments.certainty_out, confidence)
    return 0


def _certainty_dtype(path: Path) -> str:
    """float32 in [0, 1] where the format holds floats, else 0..255."""
    return "uint8" if _format(path) in ("PNG", "JPEG") else "float32"


def _run_dpp(arguments) -> int:
    import numpy as np

    from .pooling import detail_preserving_pool

    image, spatial = read_data(arguments.input, "IN")
    dtype = _output_dtype(arguments, image.dtype)
    size, stride = arguments.size, arguments.stride or arguments.size
    shape = (tuple((n - size) // stride + 1 for n in image.shape[:spatial])
             + image.shape[spatial:])
    if min(shape[:spatial]) >= 1:
        check_writable(arguments.output, dtype, shape, forced=arguments.dtype != "input",
                       spatial_ndim=spatial)
    status = _Status(arguments, image.shape, spatial)
    result = status.run(
        f"pooling {_describe(image.shape, spatial)}",
        lambda: detail_preserving_pool(
            image, size, alpha=arguments.alpha, lambda_=arguments.lambda_,
            asymmetric=arguments.asymmetric, stride=arguments.stride,
            channel_axis=_channel_axis(image, spatial),
        ),
    )
    output = to_dtype(np.asarray(result), dtype)
    write_image(arguments.output, output, spatial_ndim=spatial)
    status.wrote(arguments.output, output)
    return 0


def _run_crf(arguments) -> int:
    import numpy as np

    from .crf import pac_crf

    if _format(arguments.output) == "JPEG":
        raise UsageError(f"OUT '{arguments.output}': JPEG is lossy and would change the labels; "
                         "write a .png, .tif/.tiff or .npy file")
    image, spatial = read_data(arguments.image, "IMAGE")
    if not arguments.unary.is_file():
        raise CommandFailure(f"cannot read UNARY '{arguments.unary}': no such file")
    try:
        unary = np.load(arguments.unary, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a damaged file can raise anything
        raise CommandFailure(f"cannot read UNARY '{arguments.unary}' as NPY: {error}") from None
    expected = "(L, D, H, W)" if spatial == 3 else "(L, H, W)"
    if unary.ndim != spatial + 1 or unary.dtype.kind not in "uif":
        kind = "a volume" if spatial == 3 else "a 2-D image"
        raise CommandFailure(f"UNARY '{arguments.unary}' must be a numeric {expected} array "
                             f"when IMAGE is {kind}, got {unary.dtype} of shape {unary.shape}")
    labels_count = unary.shape[0]
    dtype = np.uint8 if labels_count <= 256 else np.uint16 if labels_count <= 65536 else np.uint32
    check_writable(arguments.output, dtype, unary.shape[1:], spatial_ndim=spatial)
    status = _Status(arguments, image.shape, spatial)
    labels = status.run(
        f"labelling {_describe(image.shape, spatial)}, {labels_count} labels",
        lambda: pac_crf(unary, image, num_steps=arguments.steps, input=arguments.input_kind,
                        output="labels", channel_axis=_channel_axis(image, spatial),
                        spatial_ndim=spatial),
    )
    output = np.asarray(labels).astype(dtype)
    write_image(arguments.output, output, spatial_ndim=spatial)
    status.wrote(arguments.output, output)
    return 0


def _run_info(arguments) -> int:
    import platform

    import numpy as np

    from . import __version__

    lines = [("pacarray", f"{__version__} ({Path(__file__).resolve().parent})"),
             ("Python", f"{platform.python_version()} ({sys.executable})"),
             ("NumPy", np.__version__)]
    try:
        import numba
    except ImportError as error:  # a broken install should still get a report
        lines.append(("Numba", f"not importable: {error}"))
        numba = None
    if numba is not None:
        lines.append(("Numba", numba.__version__))
    lines.append(("backend numpy", "available (CPU, Numba kernels)"))
    lines.append(("backend cupy", _cupy_report()))
    if numba is not None:
        lines.extend(_numba_report(numba))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    return 0


def _cupy_report() -> str:
    try:
        import cupy
    except Exception as error:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return ("not installed (pip install 'pacarray[cuda12]')"
                if isinstance(error, ModuleNotFoundError) else f"not importable: {error}")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001 - no driver, no device: a report, not a failure
        return f"CuPy {cupy.__version__} installed, no usable CUDA device ({error})"
    if count == 0:
        return f"CuPy {cupy.__version__} installed, no CUDA device"
    try:
        properties = cupy.cuda.runtime.getDeviceProperties(0)
        name = properties["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        device = (f"{name}, compute capability {properties['major']}.{properties['minor']}, "
                  f"{properties['totalGlobalMem'] / 2**30:.0f} GiB")
    except Exception as error:  # noqa: BLE001
        device = f"device 0 not queryable: {error}"
    return f"CuPy {cupy.__version__}, {count} CUDA device{'s' if count > 1 else ''}: {device}"


def _numba_report(numba) -> list[tuple[str, str]]:
    from ._cpu import _numba_kernels

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        # pacarray's kernels run on its own pool of Python threads (docs/design.md section 6),
        # not on Numba's threading layer, whose choice therefore does not matter here.
        ("threads", f"{numba.get_num_threads()} (numba.get_num_threads(); NUMBA_NUM_THREADS="
                    f"{numba.config.NUMBA_NUM_THREADS}; {cpus} CPUs available)"),
        ("Numba cache", _numba_cache_dir(_numba_kernels.fill_kernel.py_func)),
    ]


def _numba_cache_dir(function) -> str:
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return f"{configured} (NUMBA_CACHE_DIR)"
    kernels = Path(__file__).resolve().parent / "_cpu" / "__init__.py"
    # Ask Numba's own locators where the cache of a kernel in pacarray/_cpu goes: beside the
    # sources when that directory is writable, else a per-user directory.
    try:
        from numba.core import caching

        for locator_class in caching.CacheImpl._locator_classes:
            locator = locator_class.from_function(function, str(kernels))
            if locator is not None:
                return f"{locator.get_cache_path()} (default; set NUMBA_CACHE_DIR to move it)"
    except Exception:  # noqa: BLE001 - private Numba API: fall back to the documented rule
        pass
    return (f"{kernels.parent / '__pycache__'} (default, or a per-user directory when that is "
            "read-only; set NUMBA_CACHE_DIR to move it)")


def _run_demo(arguments) -> int:
    from . import demo

    return demo.main(arguments)


def run_bench(argv: list[str]) -> int:
    """``pacarray bench ARGS``: ``python -m pacarray.benchmarks ARGS``."""
    from .benchmarks.__main__ import main as bench_main

    try:
        return bench_main(argv)
    except SystemExit as exit_:
        return _exit_status(exit_)


# --------------------------------------------------------------------------- parser

_TOP_EPILOG = """\
examples:
  pacarray bilateral photo.png smooth.png --sigma-spatial 3 --sigma-color 25
  pacarray upsample depth-small.tif photo.png depth.tif --sigma-color 20
  pacarray fill depth.tif filled.tif --missing-value 0 --sigma-spatial 4
  pacarray info

Sigmas are in the image's own units: for uint8 images --sigma-color 25 is about 0.1 of the
range. Formats: PNG, JPEG (Pillow), TIFF (tifffile, any dtype), .npy. A multi-page TIFF is a
volume (one slice per page), filtered in 3-D and written as a multi-page TIFF. Exit status:
0 done, 1 failed (file or data), 2 usage error. Run 'pacarray COMMAND --help' for a command's
options.
"""

_UNITS = ("Sigmas are in the image's own units: for a uint8 image --sigma-color 25 is about 0.1 "
          "of the range (25/255); for uint16 0.1 is about 6554; float images use their values.")
_VOLUMES = ("A multi-page TIFF is a volume (pages are slices) and is filtered in 3-D; the "
            "output is then a multi-page TIFF or .npy.")


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions but keeps the epilog's example lines as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action.choices, dict):
            # argparse measures the command names without the indent it then gives them, and
            # would push the help of the longest one to the next line.
            longest = max(map(len, action.choices), default=0)
            self._action_max_length = max(self._action_max_length,
                                          longest + self._current_indent
                                          + self._indent_increment)


def _command(commands, name, *, help, description, epilog):
    return commands.add_parser(name, help=help, description=description, epilog=epilog,
                               formatter_class=_Formatter)


def _add_spacing(parser) -> None:
    parser.add_argument("--spacing", type=_spacing, metavar="SZ,SY,SX",
                        help="physical pixel size per axis (SY,SX for an image), the unit of "
                             "--sigma-spatial (default: 1 pixel)")


def _add_common(parser, *, dtype: bool = True) -> None:
    """``--dtype`` (commands that write images) and ``--verbose`` / ``--quiet``."""
    if dtype:
        parser.add_argument("--dtype", choices=("input", "float32", "float64"), default="input",
                            help="dtype of the output file: the input's (default; integers "
                                 "rounded and clipped to its range) or float (TIFF and .npy "
                                 "only)")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="print a status line on stderr whatever the image size, and "
                               "the traceback of a failure")
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="no status line, even for images above 4 megapixels")


def build_parser() -> argparse.ArgumentParser:
    """The ``pacarray`` argument parser with every sub-command."""
    parser = _Parser(
        prog=PROG,
        description="pacarray: pixel-adaptive convolution on NumPy and CuPy arrays, and its "
                    "classic filters applied to image files.",
        epilog=_TOP_EPILOG,
        formatter_class=_Formatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub = _command(
        commands, "bilateral", help="bilateral filter (joint with --guide)",
        description="Edge-preserving smoothing: each pixel becomes the mean of its neighbours "
                    "weighted by distance and by colour difference (of the guide's colours "
                    "with --guide). pacarray.bilateral_filter. " + _UNITS + " " + _VOLUMES,
        epilog="examples:\n"
               "  pacarray bilateral photo.png smooth.png --sigma-spatial 3 --sigma-color 25\n"
               "  pacarray bilateral scan.tif smooth.tif --sigma-spatial 2 --sigma-color 0.1 "
               "--dtype float32\n"
               "  pacarray bilateral depth.tif depth-smooth.tif --sigma-spatial 4 "
               "--sigma-color 20 --guide photo.png\n"
               "  pacarray bilateral stack.tif stack-smooth.tif --sigma-spatial 0.3 "
               "--sigma-color 200 --spacing 0.5,0.1,0.1",
    )
    sub.add_argument("input", metavar="IN", type=_image_path, help="image to filter")
    sub.add_argument("output", metavar="OUT", type=_image_path, help="filtered image to write")
    sub.add_argument("--sigma-spatial", type=_positive, required=True, metavar="S",
                     help="spatial Gaussian sigma in pixels (in the unit of --spacing "
                          "when given)")
    sub.add_argument("--sigma-color", type=_positive, required=True, metavar="C",
                     help="range Gaussian sigma in the image's units (the guide's with --guide)")
    sub.add_argument("--radius", type=_non_negative_int, metavar="R",
                     help="window radius in pixels (default: ceil(3 x sigma-spatial))")
    sub.add_argument("--window", choices=("disk", "square"), default="disk",
                     help="window shape (default: disk)")
    sub.add_argument("--mode", default="mirror",
                     choices=("mirror", "reflect", "nearest", "wrap", "constant", "exclude"),
                     help="border handling, scipy.ndimage's names; exclude drops the taps "
                          "outside (default: mirror)")
    sub.add_argument("--cval", type=_finite, default=0.0, metavar="V",
                     help="value outside the image with --mode constant (default: 0)")
    sub.add_argument("--color-distance", choices=("l2", "l1"), default="l2",
                     help="colour difference: Euclidean or sum of absolute differences "
                          "(OpenCV's) (default: l2)")
    sub.add_argument("--guide", type=_image_path, metavar="FILE",
                     help="guide image for a joint (cross) bilateral filter: same height and "
                          "width, any channels")
    _add_spacing(sub)
    _add_common(sub)
    sub.set_defaults(handler=_run_bilateral, parser=sub)

    sub = _command(
        commands, "upsample", help="joint bilateral upsampling of a small image to a guide's size",
        description="Bring LOW to GUIDE's resolution so that its edges follow GUIDE's (Kopf et "
                    "al.). The output has GUIDE's height and width and LOW's channels and "
                    "dtype. pacarray.joint_bilateral_upsample. --sigma-color is in GUIDE's "
                    "units: for a uint8 guide 25 is about 0.1 of the range. Two multi-page "
                    "TIFFs are a volume and its guide volume.",
        epilog="examples:\n"
               "  pacarray upsample depth-small.tif photo.png depth.tif --sigma-color 20\n"
               "  pacarray upsample mask-small.png photo.jpg mask.png --sigma-color 15 "
               "--factor 4 --sigma-spatial 0.5",
    )
    sub.add_argument("low", metavar="LOW", type=_image_path, help="low-resolution image")
    sub.add_argument("guide", metavar="GUIDE", type=_image_path,
                     help="high-resolution guide image")
    sub.add_argument("output", metavar="OUT", type=_image_path, help="upsampled image to write")
    sub.add_argument("--sigma-color", type=_positive, required=True, metavar="C",
                     help="range sigma in the guide's units")
    sub.add_argument("--sigma-spatial", type=_positive, default=1.0, metavar="S",
                     help="spatial sigma in low-resolution pixels (default: 1)")
    sub.add_argument("--factor", type=_factor, metavar="F",
                     help="upsampling factor, F, FY,FX or FZ,FY,FX for volumes (default: "
                          "ceil(GUIDE size / LOW size))")
    sub.add_argument("--radius", type=_non_negative_int, metavar="R",
                     help="window radius in low-resolution pixels (default: "
                          "ceil(2 x sigma-spatial))")
    _add_common(sub)
    sub.set_defaults(handler=_run_upsample, parser=sub)

    sub = _command(
        commands, "fill", help="fill missing pixels by normalized convolution",
        description="Normalized convolution: each pixel becomes the certainty-weighted mean of "
                    "its neighbours, so that missing pixels (certainty 0) are filled from the "
                    "others. The certainty is CERTAINTY divided by its maximum (a 0/255 or 0/1 "
                    "mask gives 0/1; one channel per image channel, or one for all), or, with "
                    "--missing-value V, 0 where every channel equals V (any channel is NaN for "
                    "V = nan). pacarray.normalized_convolution. " + _UNITS + " " + _VOLUMES,
        epilog="examples:\n"
               "  pacarray fill depth.tif valid.png filled.tif --sigma-spatial 3\n"
               "  pacarray fill depth.tif filled.tif --missing-value 0 --sigma-spatial 3 "
               "--certainty-out certainty.tif\n"
               "  pacarray fill depth.tif valid.png filled.tif --sigma-spatial 4 --guide "
               "photo.png --sigma-color 20",
    )
    sub.add_argument("input", metavar="IN", type=_image_path, help="image with missing pixels")
    sub.add_argument("certainty", metavar="CERTAINTY", type=_image_path, nargs="?",
                     help="mask image: 0 missing, its maximum fully trusted (leave out with "
                          "--missing-value)")
    sub.add_argument("output", metavar="OUT", type=_image_path, help="filled image to write")
    sub.add_argument("--sigma-spatial", type=_positive, required=True, metavar="S",
                     help="spatial Gaussian sigma in pixels (in the unit of --spacing "
                          "when given)")
    sub.add_argument("--missing-value", type=_number, metavar="V",
                     help="pixels equal to V in every channel are missing ('nan' allowed)")
    sub.add_argument("--radius", type=_non_negative_int, metavar="R",
                     help="window radius in pixels (default: ceil(3 x sigma-spatial))")
    sub.add_argument("--guide", type=_image_path, metavar="FILE",
                     help="guide image for edge-aware weights (needs --sigma-color)")
    sub.add_argument("--sigma-color", type=_positive, metavar="C",
                     help="range sigma in the guide's units (with --guide)")
    sub.add_argument("--certainty-out", type=_image_path, metavar="FILE",
                     help="also write the output certainty: float32 in [0, 1] to TIFF/.npy, "
                          "0..255 to PNG/JPEG")
    _add_spacing(sub)
    _add_common(sub)
    sub.set_defaults(handler=_run_fill, parser=sub)

    sub = _command(
        commands, "dpp", help="detail-preserving pooling: downscaling that keeps details",
        description="Detail-preserving pooling (Saeedan et al.): a weighted average over each "
                    "window whose weights alpha + (d^2 + eps^2)^(lambda/2) grow with a pixel's "
                    "difference d from the smoothed window centre, so that thin lines and dots "
                    "survive downscaling. d is in the image's units. "
                    "pacarray.detail_preserving_pool. " + _VOLUMES,
        epilog="examples:\n"
               "  pacarray dpp photo.png small.png --size 3 --alpha 1 --lambda 1\n"
               "  pacarray dpp scan.tif small.tif --size 5 --stride 4 --alpha 0.5 --lambda 2 "
               "--asymmetric",
    )
    sub.add_argument("input", metavar="IN", type=_image_path, help="image to pool")
    sub.add_argument("output", metavar="OUT", type=_image_path, help="pooled image to write")
    sub.add_argument("--size", type=_odd_size, required=True, metavar="N",
                     help="odd pooling window size")
    sub.add_argument("--alpha", type=_non_negative, required=True, metavar="A",
                     help="weight offset >= 0 (large alpha tends to average pooling)")
    sub.add_argument("--lambda", dest="lambda_", type=_finite, required=True, metavar="L",
                     help="power of the difference: 0 average pooling, > 0 favours details, "
                          "< 0 favours similar pixels")
    sub.add_argument("--asymmetric", action="store_true",
                     help="count only pixels darker than the smoothed centre")
    sub.add_argument("--stride", type=_positive_int, metavar="N",
                     help="step between windows (default: --size)")
    _add_common(sub)
    sub.set_defaults(handler=_run_dpp, parser=sub)

    sub = _command(
        commands, "crf", help="refine class scores along the image's edges (PAC-CRF)",
        description="Mean-field CRF inference with pixel-adaptive messages (pacarray.pac_crf, "
                    "default pairwise term): per-pixel class scores UNARY, a NumPy .npy array "
                    "(L, H, W), are refined to follow IMAGE's edges and the label map is "
                    "written (uint8 for up to 256 labels, else uint16). Integer images are "
                    "compared on [0, 1] by their dtype's maximum; float images should lie in "
                    "[0, 1]. With a multi-page TIFF volume as IMAGE, UNARY is (L, D, H, W) "
                    "and the labels are a volume.",
        epilog="examples:\n"
               "  pacarray crf photo.png scores.npy labels.png\n"
               "  pacarray crf photo.png probabilities.npy labels.npy --input probabilities "
               "--steps 10",
    )
    sub.add_argument("image", metavar="IMAGE", type=_image_path, help="image the labels follow")
    sub.add_argument("unary", metavar="UNARY", type=_npy_path,
                     help=".npy array (L, H, W) of class scores ((L, D, H, W) for a volume)")
    sub.add_argument("output", metavar="OUT", type=_image_path,
                     help="label map to write (.png, .tif/.tiff or .npy)")
    sub.add_argument("--steps", type=_non_negative_int, default=5, metavar="N",
                     help="mean-field updates (default: 5)")
    sub.add_argument("--input", dest="input_kind", choices=("logits", "probabilities"),
                     default="logits", help="what UNARY holds (default: logits)")
    _add_common(sub, dtype=False)
    sub.set_defaults(handler=_run_crf, parser=sub)

    sub = _command(
        commands, "info", help="versions, backends, threads and Numba cache",
        description="Print pacarray's version, the backends (NumPy always; CuPy and a GPU when "
                    "present), Numba's version, the thread count and the cache "
                    "directory, and the Python and NumPy versions.",
        epilog="example:\n  pacarray info",
    )
    sub.set_defaults(handler=_run_info, parser=sub)

    sub = _command(
        commands, "warmup", help="compile the CPU kernels ahead of their first use",
        description="Make the first call of each public function on tiny inputs, in parallel "
                    "worker processes, so that later processes load every Numba kernel from "
                    "the on-disk cache instead of compiling it (tens of seconds per function "
                    "in a new environment). pacarray.warmup.",
        epilog="examples:\n  pacarray warmup\n  pacarray warmup --dtype both\n"
               "  pacarray warmup pac_conv pac_conv_vjp --processes 2",
    )
    from ._warmup import WARMUP_FUNCTIONS

    sub.add_argument("functions", nargs="*", metavar="FUNCTION",
                     help="what to compile (default: everything): "
                          + ", ".join(WARMUP_FUNCTIONS))
    sub.add_argument("--dtype", choices=("float32", "float64", "both"), default="float32",
                     help="dtype of the kernels (default: float32)")
    sub.add_argument("--processes", type=_positive_int, metavar="N",
                     help="worker processes (default: the number of CPUs)")
    sub.set_defaults(handler=_run_warmup, parser=sub)

    # Only listed here: main() hands `bench ...` to the benchmarks' own parser untouched.
    commands.add_parser("bench", add_help=False,
                        help="run the benchmarks: python -m pacarray.benchmarks ARGS")

    sub = _command(
        commands, "demo", help="denoise the bundled sample photograph with a bilateral filter",
        description="Add seeded Gaussian noise to the bundled sample photograph, remove it with "
                    "an edge-preserving bilateral filter (fused pac_pool) and write a "
                    "side-by-side PNG, noisy | filtered.",
        epilog="examples:\n  pacarray demo\n  pacarray demo --noise 30 --output demo.png",
    )
    from . import demo

    demo.add_arguments(sub)
    sub.set_defaults(handler=_run_demo, parser=sub)
    return parser


def _run_warmup(arguments) -> int:
    from ._warmup import WARMUP_FUNCTIONS, warmup

    unknown = [name for name in arguments.functions if name not in WARMUP_FUNCTIONS]
    if unknown:
        raise UsageError(f"unknown FUNCTION {', '.join(unknown)}; choose from "
                         f"{', '.join(WARMUP_FUNCTIONS)}")
    dtypes = ("float32", "float64") if arguments.dtype == "both" else (arguments.dtype,)
    start = time.perf_counter()
    timings = warmup(arguments.functions or None, dtypes=dtypes, processes=arguments.processes)
    print(f"compiled {len(timings)} task(s) in {time.perf_counter() - start:.1f} s; later "
          "processes load them from Numba's cache")
    return 0


def _exit_status(exit_: SystemExit) -> int:
    code = exit_.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises for user errors).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return run_bench(argv[1:])
    parser = build_parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit_:
        return _exit_status(exit_)
    if arguments.command is None:
        parser.print_help()
        return 0
    prog = arguments.parser.prog
    try:
        return arguments.handler(arguments)
    except UsageError as error:
        print(f"{prog}: error: {error}\nTry '{prog} --help' for more information.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CommandFailure, ValueError, TypeError, OSError, NotImplementedError,
            MemoryError) as error:
        message = str(error) or type(error).__name__
        if isinstance(error, MemoryError):
            message = "out of memory" + (f": {message}" if str(error) else "")
        print(f"{prog}: error: {message}", file=sys.stderr)
        if getattr(arguments, "verbose", False):
            # A bug report needs the traceback; a user's mistake does not.
            import traceback

            traceback.print_exc()
        return 1
