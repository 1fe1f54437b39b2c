"""The ``pacarray`` command line, end to end on tiny files in a temporary directory.

Each command runs in-process through :func:`pacarray.cli.main` on small synthetic images; the file
it writes must have the expected dtype and shape and hold what the library call gives on the same
data (rounded to the file's dtype).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import pacarray
from pacarray import cli

HEIGHT, WIDTH = 20, 24
COMMANDS = ("bilateral", "upsample", "fill", "dpp", "crf", "info", "demo")


def _rounded(result, dtype):
    info = np.iinfo(dtype)
    return np.clip(np.rint(np.asarray(result)), info.min, info.max).astype(dtype)


def _assert_within_rounding(actual, expected):
    """One grey level of slack: the same float result may round either way at .5."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    difference = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert difference.max() <= 1


@pytest.fixture
def files(tmp_path):
    """Writes the synthetic inputs on demand: ``files("rgb.png")`` -> (path, array)."""
    rng = np.random.default_rng(7)
    # Two flat halves plus noise: an edge for the edge-aware filters to keep.
    base = np.where(np.arange(WIDTH) < WIDTH // 2, 60.0, 190.0)[None, :, None]
    rgb = np.clip(base + rng.normal(0, 12, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    gray16 = np.clip(base[..., 0] * 250 + rng.normal(0, 2000, (HEIGHT, WIDTH)), 0,
                     65535).astype(np.uint16)
    mask = np.full((HEIGHT, WIDTH), 255, np.uint8)
    mask[4:9, 5:11] = 0
    makers = {
        "rgb.png": lambda p: (Image.fromarray(rgb).save(p), rgb),
        "gray16.tif": lambda p: (tifffile.imwrite(p, gray16), gray16),
        "float.tif": lambda p: (tifffile.imwrite(p, rgb / np.float32(255), photometric="rgb"),
                                rgb / np.float32(255)),
        "mask.png": lambda p: (Image.fromarray(mask).save(p), mask),
        "small.png": lambda p: (Image.fromarray(rgb[2::4, 2::4].copy()).save(p),
                                rgb[2::4, 2::4]),
        "photo.jpg": lambda p: (Image.fromarray(rgb).save(p, quality=95),
                                np.asarray(Image.open(p))),
        "unary.npy": lambda p: (np.save(p, u := rng.standard_normal((3, HEIGHT, WIDTH))), u),
    }

    def make(name):
        path = tmp_path / name
        _, array = makers[name](path)
        return path, array

    return make


def _run(*args):
    return cli.main([str(a) for a in args])


# --------------------------------------------------------------------------- commands

def test_bilateral_uint8_png(files, tmp_path, capsys):
    source, image = files("rgb.png")
    out = tmp_path / "out.png"
    assert _run("bilateral", source, out, "--sigma-spatial", 1.5, "--sigma-color", 25) == 0
    written = np.asarray(Image.open(out))
    expected = pacarray.bilateral_filter(image, sigma_spatial=1.5, sigma_color=25,
                                         channel_axis=-1)
    _assert_within_rounding(written, _rounded(expected, np.uint8))
    assert capsys.readouterr().err == ""   # tiny image, no status line by default


def test_joint_bilateral_uint16_tiff_with_options(files, tmp_path):
    source, image = files("gray16.tif")
    guide_path, guide = files("rgb.png")
    out = tmp_path / "out.tiff"
    assert _run("bilateral", source, out, "--sigma-spatial", 2, "--sigma-color", 30,
                "--guide", guide_path, "--radius", 3, "--window", "square",
                "--mode", "exclude") == 0
    written = tifffile.imread(out)
    expected = pacarray.bilateral_filter(image, sigma_spatial=2, sigma_color=30, guide=guide,
                                         radius=3, window="square", mode="exclude")
    _assert_within_rounding(written, _rounded(expected, np.uint16))


def test_bilateral_float32_tiff_keeps_floats(files, tmp_path):
    source, image = files("float.tif")
    out = tmp_path / "out.tif"
    assert _run("bilateral", source, out, "--sigma-spatial", 1, "--sigma-color", 0.1) == 0
    written = tifffile.imread(out)
    assert written.dtype == np.float32 and written.shape == (HEIGHT, WIDTH, 3)
    expected = pacarray.bilateral_filter(image, sigma_spatial=1, sigma_color=0.1,
                                         channel_axis=-1)
    np.testing.assert_allclose(written, expected, rtol=1e-6, atol=1e-7)


def test_dtype_float32_of_an_integer_image(files, tmp_path):
    source, image = files("rgb.png")
    out = tmp_path / "out.npy"
    assert _run("bilateral", source, out, "--sigma-spatial", 1.5, "--sigma-color", 25,
                "--dtype", "float32") == 0
    written = np.load(out)
    expected = pacarray.bilateral_filter(image, sigma_spatial=1.5, sigma_color=25,
                                         channel_axis=-1)
    assert written.dtype == np.float32
    np.testing.assert_allclose(written, expected, rtol=1e-6)


def test_upsample_png_with_jpeg_guide(files, tmp_path):
    low_path, low = files("small.png")
    guide_path, guide = files("photo.jpg")
    out = tmp_path / "up.png"
    assert _run("upsample", low_path, guide_path, out, "--sigma-color", 20,
                "--sigma-spatial", 0.8, "--factor", 4) == 0
    written = np.asarray(Image.open(out))
    expected = pacarray.joint_bilateral_upsample(low, guide, factor=4, sigma_spatial=0.8,
                                                 sigma_color=20, channel_axis=-1)
    _assert_within_rounding(written, _rounded(expected, np.uint8))


def test_fill_uint16_with_mask_and_certainty_out(files, tmp_path):
    source, data = files("gray16.tif")
    mask_path, mask = files("mask.png")
    out, certainty_out = tmp_path / "filled.tif", tmp_path / "certainty.tif"
    assert _run("fill", source, mask_path, out, "--sigma-spatial", 2,
                "--certainty-out", certainty_out) == 0
    filled, confidence = pacarray.normalized_convolution(data, mask / 255.0, sigma_spatial=2)
    _assert_within_rounding(tifffile.imread(out), _rounded(filled, np.uint16))
    written = tifffile.imread(certainty_out)
    assert written.dtype == np.float32 and written.shape == (HEIGHT, WIDTH)
    np.testing.assert_allclose(written, confidence, rtol=1e-6)


def test_fill_missing_nan_in_float_tiff(files, tmp_path):
    _, data = files("float.tif")
    holes = data.copy()
    holes[3:6, 4:9] = np.nan
    source, out = tmp_path / "holes.tif", tmp_path / "filled.npy"
    tifffile.imwrite(source, holes, photometric="rgb")
    assert _run("fill", source, out, "--missing-value", "nan", "--sigma-spatial", 1.5) == 0
    written = np.load(out)
    certainty = np.ones((HEIGHT, WIDTH))
    certainty[3:6, 4:9] = 0
    expected, _ = pacarray.normalized_convolution(np.nan_to_num(holes), certainty,
                                                  sigma_spatial=1.5, channel_axis=-1)
    assert written.dtype == np.float32 and np.isfinite(written).all()
    np.testing.assert_allclose(written, expected, rtol=1e-6, atol=1e-7)


def test_fill_missing_value_zero_and_png_certainty(files, tmp_path):
    _, image = files("rgb.png")
    holes = image.copy()
    holes[10:13, 2:5] = 0
    source, out, certainty_out = tmp_path / "holes.png", tmp_path / "o.png", tmp_path / "c.png"
    Image.fromarray(holes).save(source)
    assert _run("fill", source, out, "--missing-value", 0, "--sigma-spatial", 1.5,
                "--certainty-out", certainty_out) == 0
    certainty = np.ones((HEIGHT, WIDTH))
    certainty[10:13, 2:5] = 0
    filled, confidence = pacarray.normalized_convolution(holes, certainty, sigma_spatial=1.5,
                                                         channel_axis=-1)
    _assert_within_rounding(np.asarray(Image.open(out)), _rounded(filled, np.uint8))
    _assert_within_rounding(np.asarray(Image.open(certainty_out)),
                            _rounded(confidence * 255, np.uint8))


def test_dpp_jpeg_in_png_out(files, tmp_path):
    source, image = files("photo.jpg")
    out = tmp_path / "pooled.png"
    assert _run("dpp", source, out, "--size", 3, "--alpha", 1, "--lambda", 1,
                "--asymmetric") == 0
    written = np.asarray(Image.open(out))
    expected = pacarray.detail_preserving_pool(image, 3, alpha=1.0, lambda_=1.0,
                                               asymmetric=True, channel_axis=-1)
    assert written.shape == (6, 8, 3)
    _assert_within_rounding(written, _rounded(expected, np.uint8))
    assert _run("dpp", source, tmp_path / "pooled.jpg", "--size", 3, "--stride", 2,
                "--alpha", 1, "--lambda", 1) == 0
    assert np.asarray(Image.open(tmp_path / "pooled.jpg")).shape == (9, 11, 3)


def test_crf_labels(files, tmp_path):
    image_path, image = files("rgb.png")
    unary_path, unary = files("unary.npy")
    out_png, out_npy = tmp_path / "labels.png", tmp_path / "labels.npy"
    assert _run("crf", image_path, unary_path, out_png, "--steps", 3) == 0
    assert _run("crf", image_path, unary_path, out_npy, "--steps", 3) == 0
    expected = pacarray.pac_crf(unary, image, num_steps=3, output="labels")
    for written in (np.asarray(Image.open(out_png)), np.load(out_npy)):
        assert written.dtype == np.uint8 and written.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(written, expected)


def test_crf_refuses_jpeg_labels(files, tmp_path, capsys):
    image_path, _ = files("rgb.png")
    unary_path, _ = files("unary.npy")
    assert _run("crf", image_path, unary_path, tmp_path / "labels.jpg") == 2
    assert capsys.readouterr().err.startswith("pacarray crf: error: OUT")


def test_info(capsys):
    assert _run("info") == 0
    out = capsys.readouterr().out
    for field in ("pacarray", "Python", "NumPy", "Numba", "backend numpy", "backend cupy",
                  "threads", "Numba cache"):
        assert f"\n{field} " in "\n" + out, field
    assert pacarray.__version__ in out


def test_bench_forwards_its_arguments(capsys):
    assert _run("bench", "--help") == 0
    assert "benchmarks" in capsys.readouterr().out
    assert _run("bench", "--repeat", 0) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- help and errors

@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    assert _run(command, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pacarray {command}")
    assert "example" in out


def test_top_level_help_and_no_command(capsys):
    assert _run("--help") == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS + ("bench",))
    assert _run() == 0
    assert capsys.readouterr().out == out
    assert _run("--version") == 0
    assert capsys.readouterr().out.strip() == f"pacarray {pacarray.__version__}"


def _error(capsys, code, argv, command, text):
    assert _run(*argv) == code
    err = capsys.readouterr().err
    assert err.startswith(f"pacarray {command}: error: "), err
    assert text in err.splitlines()[0]
    assert "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    _error(capsys, 1, ["bilateral", tmp_path / "nope.png", tmp_path / "o.png",
                       "--sigma-spatial", 1, "--sigma-color", 10],
           "bilateral", "cannot read IN")
    assert not (tmp_path / "o.png").exists()


def test_unknown_extension(files, tmp_path, capsys):
    source, _ = files("rgb.png")
    _error(capsys, 2, ["bilateral", source, tmp_path / "o.bmp", "--sigma-spatial", 1,
                       "--sigma-color", 10], "bilateral", "unknown image file type")
    _error(capsys, 2, ["dpp", tmp_path / "in", tmp_path / "o.png", "--size", 3, "--alpha", 1,
                       "--lambda", 1], "dpp", "no extension")


@pytest.mark.parametrize("option, value", [("--sigma-color", -5), ("--sigma-spatial", 0),
                                           ("--sigma-color", "nan"), ("--radius", -1)])
def test_bad_numbers(files, tmp_path, capsys, option, value):
    source, _ = files("rgb.png")
    argv = {"--sigma-spatial": 1, "--sigma-color": 10, option: value}
    _error(capsys, 2, ["bilateral", source, tmp_path / "o.png",
                       *[str(x) for pair in argv.items() for x in pair]],
           "bilateral", f"argument {option}")


def test_png_cannot_hold_floats(files, tmp_path, capsys):
    source, _ = files("float.tif")
    argv = ["bilateral", source, tmp_path / "o.png", "--sigma-spatial", 1, "--sigma-color", 0.1]
    _error(capsys, 2, argv, "bilateral", "PNG holds uint8")
    source, _ = files("rgb.png")
    argv[1] = source
    _error(capsys, 2, argv + ["--dtype", "float32"], "bilateral", "leave out --dtype")
    _error(capsys, 2, argv[:2] + [tmp_path / "o.jpg"] + argv[3:] + ["--dtype", "float64"],
           "bilateral", "JPEG holds uint8")


def test_data_errors_exit_1(files, tmp_path, capsys):
    small, _ = files("small.png")
    source, _ = files("rgb.png")
    # the library rejects a guide of another size
    _error(capsys, 1, ["bilateral", source, tmp_path / "o.png", "--sigma-spatial", 1,
                       "--sigma-color", 10, "--guide", small], "bilateral", "guide")
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"not a picture")
    _error(capsys, 1, ["dpp", damaged, tmp_path / "o.png", "--size", 3, "--alpha", 1,
                       "--lambda", 1], "dpp", "cannot read IN")
    stack = tmp_path / "stack.tif"     # two page axes: neither an image nor a volume
    tifffile.imwrite(stack, np.zeros((2, 5, 8, 8), np.uint8), photometric="minisblack")
    _error(capsys, 1, ["dpp", stack, tmp_path / "o.tif", "--size", 3, "--alpha", 1,
                       "--lambda", 1], "dpp", "stack of shape (2, 5, 8, 8)")
    _error(capsys, 1, ["bilateral", source, tmp_path / "no" / "o.png", "--sigma-spatial", 1,
                       "--sigma-color", 10], "bilateral", "cannot write OUT")


def test_fill_usage_errors(files, tmp_path, capsys):
    source, _ = files("gray16.tif")
    mask, _ = files("mask.png")
    out = tmp_path / "o.tif"
    _error(capsys, 2, ["fill", source, out, "--sigma-spatial", 1], "fill", "--missing-value V")
    _error(capsys, 2, ["fill", source, mask, out, "--sigma-spatial", 1, "--missing-value", 0],
           "fill", "not both")
    _error(capsys, 2, ["fill", source, mask, out, "--sigma-spatial", 1, "--sigma-color", 3],
           "fill", "--guide and --sigma-color")
    _error(capsys, 2, ["fill", source, mask, out], "fill", "--sigma-spatial")


def test_status_line(files, tmp_path, capsys, monkeypatch):
    source, _ = files("rgb.png")
    argv = ["bilateral", source, tmp_path / "o.png", "--sigma-spatial", 1, "--sigma-color", 9]
    assert _run(*argv, "--verbose") == 0
    err = capsys.readouterr().err
    assert err.startswith("filtering 24x20x3 ... done in ") and "wrote" in err
    monkeypatch.setattr(cli, "PROGRESS_PIXELS", 100)   # "big" images get it unasked
    assert _run(*argv) == 0
    err = capsys.readouterr().err
    if importlib.util.find_spec("dask") is None:
        assert err.startswith("filtering 24x20x3 ... done in ")
    else:   # computed in blocks by pacarray.progress, reported by quarters
        assert err.startswith("filtering 24x20x3 ... 25% 50% 75% 100% done in "), err
    blocked = np.asarray(Image.open(tmp_path / "o.png"))
    assert _run(*argv, "--quiet") == 0
    assert capsys.readouterr().err == ""
    # What is printed does not change the file: --quiet cuts the same blocks.
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), blocked)
    image = np.asarray(Image.open(source))
    expected = pacarray.bilateral_filter(image, sigma_spatial=1, sigma_color=9, channel_axis=-1)
    _assert_within_rounding(blocked, _rounded(expected, np.uint8))


# --------------------------------------------------------------------------- volumes

DEPTH = 4


def _volume(dtype=np.uint16, channels=None):
    rng = np.random.default_rng(3)
    shape = (DEPTH, HEIGHT, WIDTH) + ((channels,) if channels else ())
    base = np.where(np.arange(WIDTH) < WIDTH // 2, 0.25, 0.75).reshape(1, 1, WIDTH)
    if channels:
        base = base[..., None]
    values = np.clip(base + rng.normal(0, 0.05, shape), 0, 1)
    if np.dtype(dtype).kind == "u":
        return np.rint(values * np.iinfo(dtype).max).astype(dtype)
    return values.astype(dtype)


def test_bilateral_multipage_uint16_tiff_is_a_volume(tmp_path, capsys):
    volume = _volume()
    source, out = tmp_path / "stack.tif", tmp_path / "smooth.tif"
    tifffile.imwrite(source, volume, photometric="minisblack")
    assert _run("bilateral", source, out, "--sigma-spatial", 1, "--sigma-color", 4000,
                "--spacing", "2,1,1", "--verbose") == 0
    err = capsys.readouterr().err
    assert err.startswith(f"filtering {WIDTH}x{HEIGHT}x{DEPTH} volume ... done in ")
    with tifffile.TiffFile(out) as tiff:       # one page per slice, as it came in
        assert len(tiff.pages) == DEPTH
    expected = pacarray.bilateral_filter(volume, sigma_spatial=1, sigma_color=4000,
                                         spacing=(2, 1, 1))
    _assert_within_rounding(tifffile.imread(out), _rounded(expected, np.uint16))
    # A 2-D filter slice by slice would differ: the depth taps count.
    flat = np.stack([pacarray.bilateral_filter(plane, sigma_spatial=1, sigma_color=4000)
                     for plane in volume])
    assert np.abs(_rounded(flat, np.uint16).astype(int) - tifffile.imread(out)).max() > 1


@pytest.mark.slow
def test_every_filter_command_on_a_float_volume(tmp_path):
    volume = _volume(np.float32)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, volume, imagej=True, metadata={"axes": "ZYX"})
    mask = np.ones(volume.shape, np.uint8)
    mask[1:3, 5:9, 4:10] = 0
    tifffile.imwrite(tmp_path / "mask.tif", mask * 255, photometric="minisblack")
    low = volume[::2, ::2, ::2].copy()
    tifffile.imwrite(tmp_path / "low.tif", low, photometric="minisblack")
    unary = np.random.default_rng(1).standard_normal((2,) + volume.shape)
    np.save(tmp_path / "unary.npy", unary)

    assert _run("fill", source, tmp_path / "mask.tif", tmp_path / "filled.tif",
                "--sigma-spatial", 1.5, "--certainty-out", tmp_path / "c.npy") == 0
    filled, certainty = pacarray.normalized_convolution(volume, mask.astype(np.float64),
                                                        sigma_spatial=1.5)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "filled.tif"), filled, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "c.npy"), certainty, rtol=1e-5, atol=1e-6)

    assert _run("dpp", source, tmp_path / "pooled.tif", "--size", 3, "--stride", 2,
                "--alpha", 0.5, "--lambda", 2) == 0
    pooled = pacarray.detail_preserving_pool(volume, 3, alpha=0.5, lambda_=2.0, stride=2)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "pooled.tif"), pooled, rtol=1e-5,
                               atol=1e-6)

    assert _run("upsample", tmp_path / "low.tif", source, tmp_path / "up.tif",
                "--sigma-color", 0.2, "--factor", "2,2,2") == 0
    up = pacarray.joint_bilateral_upsample(low, volume, factor=2, sigma_color=0.2)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "up.tif"), up, rtol=1e-5, atol=1e-6)

    assert _run("crf", source, tmp_path / "unary.npy", tmp_path / "labels.tif",
                "--steps", 2) == 0
    labels = pacarray.pac_crf(unary, volume, num_steps=2, output="labels", channel_axis=None,
                              spatial_ndim=3)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), labels)


@pytest.mark.parametrize("layout", ["QYX", "QYXS", "ImageJ ZYX", "ImageJ ZCYX"])
def test_multipage_tiff_layouts_read_as_volumes(tmp_path, layout):
    path = tmp_path / "stack.tif"
    if layout == "QYX":
        volume = _volume()
        tifffile.imwrite(path, volume, photometric="minisblack")
    elif layout == "QYXS":
        volume = _volume(np.uint8, channels=3)
        tifffile.imwrite(path, volume, photometric="rgb")
    elif layout == "ImageJ ZYX":
        volume = _volume(np.float32)
        tifffile.imwrite(path, volume, imagej=True, metadata={"axes": "ZYX"})
    else:
        volume = _volume(np.uint16, channels=2)
        tifffile.imwrite(path, np.moveaxis(volume, -1, 1), imagej=True,
                         metadata={"axes": "ZCYX"})
    array, spatial_ndim = cli.read_data(path)
    assert spatial_ndim == 3
    np.testing.assert_array_equal(array, volume)
    out = tmp_path / "copy.tif"
    cli.check_writable(out, array.dtype, array.shape, spatial_ndim=3)
    cli.write_image(out, array, spatial_ndim=3)
    back, back_ndim = cli.read_data(out)
    assert back_ndim == 3 and back.dtype == volume.dtype
    np.testing.assert_array_equal(back, volume)
    with pytest.raises(cli.CommandFailure, match="is a volume of shape"):
        cli.read_image(path)


def test_volume_errors(files, tmp_path, capsys):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, _volume(), photometric="minisblack")
    image, _ = files("gray16.tif")
    common = ["--sigma-spatial", 1, "--sigma-color", 10]
    _error(capsys, 2, ["bilateral", source, tmp_path / "o.png", *common], "bilateral",
           "PNG holds one 2-D image, not a volume of 4 slices")
    _error(capsys, 2, ["bilateral", source, tmp_path / "o.tif", *common, "--spacing", "1,1"],
           "bilateral", "--spacing has 2 values and IN is a volume")
    _error(capsys, 1, ["bilateral", source, tmp_path / "o.tif", *common, "--guide", image],
           "bilateral", "guide is a 2-D image of shape (20, 24) but IN is a volume")
    _error(capsys, 2, ["upsample", source, source, tmp_path / "o.tif", "--sigma-color", 1,
                       "--factor", "2,2"], "upsample", "--factor has 2 values")
    np.save(tmp_path / "unary.npy", np.zeros((2, HEIGHT, WIDTH)))
    _error(capsys, 1, ["crf", source, tmp_path / "unary.npy", tmp_path / "o.tif"], "crf",
           "(L, D, H, W)")
    _error(capsys, 2, ["bilateral", source, tmp_path / "o.tif", "--sigma-spatial", 1,
                       "--sigma-color", 10, "--spacing", "1,0,1"], "bilateral",
           "must be a positive number")


# --------------------------------------------------------------------------- image files

@pytest.mark.parametrize("name, array", [
    ("a.png", np.arange(20 * 24 * 3, dtype=np.uint8).reshape(20, 24, 3)),
    ("a.png", np.arange(20 * 24 * 4, dtype=np.uint8).reshape(20, 24, 4)),
    ("a.png", (np.arange(20 * 24, dtype=np.uint16) * 131).reshape(20, 24)),
    ("a.tif", np.linspace(-1, 1, 20 * 24 * 5, dtype=np.float32).reshape(20, 24, 5)),
    ("a.tiff", np.linspace(0, 1, 20 * 24, dtype=np.float64).reshape(20, 24)),
    ("a.tif", (np.arange(20 * 24 * 3, dtype=np.int16) - 700).reshape(20, 24, 3)),
    ("a.npy", np.ones((4, 5, 2), np.float16)),
])
def test_lossless_formats_round_trip(tmp_path, name, array):
    path = tmp_path / name
    cli.check_writable(path, array.dtype, array.shape)
    cli.write_image(path, array)
    back = cli.read_image(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_sixteen_bit_colour_png_is_refused(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "rgb16.png"
    cv2.imwrite(str(path), np.full((4, 4, 3), 1000, np.uint16))
    with pytest.raises(cli.CommandFailure, match="16-bit colour PNG"):
        cli.read_image(path)


def test_console_entry_point_in_a_subprocess():
    # The real `python -m pacarray --help`, and the help alone imports no image library,
    # CUDA or Numba compilation: it stays instant.
    result = subprocess.run([sys.executable, "-m", "pacarray", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "bilateral" in result.stdout
    check = ("import sys; from pacarray.cli import main; main(['bilateral', '--help']); "
             "print([m for m in ('PIL', 'tifffile', 'cupy') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stdout
