"""pacarray.viz: the drawn arrays are the kernels and images they claim to be (Agg backend)."""

import doctest
import subprocess
import sys
import types

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pacarray import Gaussian, InversePower, pac_kernel, spatial_window  # noqa: E402
from pacarray import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def image():
    # A step edge and a bright line on a gradient, plus noise: kernels differ from pixel to pixel.
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:20, 0:24]
    grey = 0.2 + 0.01 * cols + 0.5 * (cols >= 12) + 0.3 * (rows == 6)
    colour = np.stack([grey, 1.0 - grey, 0.5 * grey], axis=-1)
    return (colour + 0.02 * rng.standard_normal(colour.shape)).clip(0, 1)


def planar(image):
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def full_kernel(guide_planar, kernel_size, pixel, dilation=1, **options):
    half = dilation * (kernel_size - 1) // 2
    K = pac_kernel(guide_planar, kernel_size, padding=half, dilation=dilation, **options)
    return K[0, :, :, :, pixel[0], pixel[1]]


# --------------------------------------------------------------------------------------------
# kernel_at: the window computation equals pac_kernel on the whole image


@pytest.mark.parametrize("pixel", [(10, 12), (0, 0), (19, 23), (1, 22)])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(normalize="kernel", spatial_weight=spatial_window(5, 1.5)),
        dict(family=InversePower(0.1, -1.0), smooth="gaussian", normalize="kernel"),
        dict(family=InversePower((0.1, 0.2, 0.3), 1.0, asymmetric=True), channel_wise=True,
             smooth=("average", 5)),
        dict(dilation=2, normalize="kernel"),
    ],
)
def test_kernel_at_equals_pac_kernel(image, pixel, options):
    guide = image / 0.2
    got = viz.kernel_at(image, 5, pixel, guide=guide, **options)
    expected = full_kernel(planar(guide), 5, pixel, **options)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_kernel_at_layouts_integer_image_and_mask(image):
    uint8 = np.round(image * 255).astype(np.uint8)
    mask = (np.arange(24)[None, :] % 3 != 0) & np.ones((20, 1), bool)
    expected = full_kernel(planar(uint8 / 255.0), 3, (7, 8), mask=mask[None, None],
                           normalize="mask_kernel")
    for layout in (uint8, planar(uint8)):
        got = viz.kernel_at(layout, 3, (7, 8), mask=mask, normalize="mask_kernel")
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    grey = image[..., 0]
    np.testing.assert_allclose(viz.kernel_at(grey / 0.1, 3, (4, 4)),
                               full_kernel((grey / 0.1)[None, None], 3, (4, 4)), rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(pixel=(20, 0)), ValueError, "pixel"),
        (dict(pixel=(1.5, 0)), TypeError, "pixel"),
        (dict(pixel=(1, 1), guide=np.zeros((5, 5))), ValueError, "guide"),
        (dict(pixel=(1, 1), mask=np.ones((3, 3))), ValueError, "mask"),
        (dict(pixel=(1, 1), kernel_size=4), ValueError, "kernel_size"),
    ],
)
def test_kernel_at_errors_name_the_argument(image, kwargs, error, words):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(error, match=words):
        viz.kernel_at(image, kwargs.pop("kernel_size"), kwargs.pop("pixel"), **kwargs)


# --------------------------------------------------------------------------------------------
# plot_kernel


def test_plot_kernel_draws_the_kernel_and_the_patch(image):
    guide = image / 0.15
    pixel = (6, 11)        # on the bright line, next to the edge
    fig, axes, kernel = viz.plot_kernel(image, 5, pixel, guide=guide, normalize="kernel")
    expected = full_kernel(planar(guide), 5, pixel, normalize="kernel")
    np.testing.assert_allclose(kernel, expected, rtol=1e-12)
    assert len(axes) == 2 and all(a.figure is fig for a in axes)

    heatmap = axes[1].images[0]
    np.testing.assert_allclose(np.asarray(heatmap.get_array()), expected[0], rtol=1e-12)
    assert heatmap.get_extent() == [-2.5, 2.5, 2.5, -2.5]          # pixel offsets
    assert axes[1].get_title() == "K"
    assert axes[0].get_title() == "neighbourhood of (6, 11)"
    assert "Gaussian()" in fig._suptitle.get_text()
    assert "normalize='kernel'" in fig._suptitle.get_text()

    # The patch under the window, in image coordinates (float RGB in [0, 1] shown as is).
    patch = axes[0].images[0]
    np.testing.assert_allclose(np.asarray(patch.get_array()), image[4:9, 9:14], rtol=1e-12)
    assert patch.get_extent() == [8.5, 13.5, 8.5, 3.5]
    # One marker per tap, at the tap's position, coloured by its weight.
    markers = axes[0].collections[0]
    rows, cols = np.mgrid[4:9, 9:14]
    np.testing.assert_array_equal(markers.get_offsets(), np.c_[cols.ravel(), rows.ravel()])
    np.testing.assert_allclose(markers.get_array(), expected[0].ravel(), rtol=1e-12)
    sizes = markers.get_sizes()
    assert np.argmax(sizes) == np.argmax(expected[0].ravel())


def test_plot_kernel_channel_wise_border_and_dilation(image):
    family = InversePower(0.05, -1.0)
    pixel = (1, 22)
    result = viz.plot_kernel(image, 3, pixel, family=family, channel_wise=True, dilation=2,
                             smooth="gaussian")
    expected = full_kernel(planar(image), 3, pixel, dilation=2, family=family,
                           channel_wise=True, smooth="gaussian")
    assert len(result.axes) == 4
    for channel in range(3):
        panel = result.axes[1 + channel]
        np.testing.assert_allclose(np.asarray(panel.images[0].get_array()), expected[channel],
                                   rtol=1e-12)
        assert panel.get_title() == f"K, channel {channel}"
    # The window leaves the image at the top and the right: those taps are 0 and the patch
    # stops at the border while the axes keep the whole window.
    assert np.all(expected[:, 0, :] == 0) and np.all(expected[:, :, 2] == 0)
    patch = result.axes[0].images[0]
    assert patch.get_extent() == [19.5, 23.5, 3.5, -0.5]
    assert result.axes[0].get_xlim() == (19.5, 24.5)
    assert "channel-wise" in result.figure._suptitle.get_text()


def test_plot_kernel_into_given_axes(image):
    fig, given = plt.subplots(1, 2)
    result = viz.plot_kernel(image[..., 0], 3, (5, 5), guide=image[..., 0] / 0.1, ax=given)
    assert result.figure is fig and result.axes == list(given)
    # A grey image is drawn grey with the whole image's range, not the patch's.
    patch = given[0].images[0]
    assert patch.get_cmap().name == "gray"
    assert patch.get_clim() == (image[..., 0].min(), image[..., 0].max())
    with pytest.raises(ValueError, match="ax must hold 4 Axes"):
        viz.plot_kernel(image, 3, (5, 5), channel_wise=True, family=Gaussian(), ax=given)


# --------------------------------------------------------------------------------------------
# plot_before_after


def test_plot_before_after_grey_signed_difference(image):
    before = image[..., 0]
    after = before.copy()
    after[5:8, 5:8] += 0.25
    after[10, 3] -= 0.5
    fig, axes, difference = viz.plot_before_after(before, after)
    assert [a.get_title() for a in axes] == ["before", "after", "difference (max 0.5)"]
    np.testing.assert_allclose(difference, after - before, atol=1e-15)
    np.testing.assert_allclose(np.asarray(axes[0].images[0].get_array()), before)
    np.testing.assert_allclose(np.asarray(axes[1].images[0].get_array()), after)
    # Both panels on one grey scale; the difference symmetric around 0.
    assert axes[0].images[0].get_clim() == axes[1].images[0].get_clim()
    assert axes[2].images[0].get_clim() == pytest.approx((-0.5, 0.5))
    assert len(fig.axes) == 4                                  # three panels and a colorbar


def test_plot_before_after_colour_difference_is_the_norm(image):
    after = image.copy()
    after[2, 3] = [0.0, 0.0, 0.0]
    result = viz.plot_before_after(planar(image), planar(after),
                                   titles=("noisy", "filtered", "change"))
    expected = np.sqrt(((after - image) ** 2).sum(axis=-1))
    np.testing.assert_allclose(result.difference, expected, atol=1e-15)
    np.testing.assert_allclose(np.asarray(result.axes[0].images[0].get_array()), image)
    assert result.axes[1].get_title() == "filtered"
    assert result.axes[2].get_title().startswith("change (max ")
    assert result.axes[2].images[0].get_clim()[0] == 0.0


def test_plot_before_after_errors(image):
    with pytest.raises(ValueError, match="same shape"):
        viz.plot_before_after(image, image[:-1])
    with pytest.raises(ValueError, match="titles"):
        viz.plot_before_after(image, image, titles=("a", "b"))


# --------------------------------------------------------------------------------------------
# kernel_gallery


def test_kernel_gallery_cells_hold_the_kernels(image):
    guide = image / 0.2
    pixels = {"edge": (12, 12), "line": (6, 4), "flat": (15, 18)}
    families = {
        "Gaussian": {"guide": guide},
        "inverse": InversePower(0.1, -1.0),
        "asym, channel-wise": {"family": InversePower(0.1, -1.0, asymmetric=True),
                               "channel_wise": True, "kernel_size": 3},
    }
    gallery = viz.kernel_gallery(image, pixels, families, kernel_size=5, normalize="kernel")
    assert gallery.axes.shape == (3, 4)
    assert [a.get_title() for a in gallery.axes[0]] == ["neighbourhood", *families]
    assert gallery.axes[1, 0].get_ylabel() == "line\n(6, 4)"
    for row, (label, pixel) in enumerate(pixels.items()):
        expected = {
            "Gaussian": full_kernel(planar(guide), 5, pixel, normalize="kernel"),
            "inverse": full_kernel(planar(image), 5, pixel, normalize="kernel",
                                   family=families["inverse"]),
            "asym, channel-wise": full_kernel(planar(image), 3, pixel, normalize="kernel",
                                              channel_wise=True,
                                              family=InversePower(0.1, -1.0, asymmetric=True)),
        }
        for column, name in enumerate(families, start=1):
            np.testing.assert_allclose(gallery.kernels[label, name], expected[name], rtol=1e-12)
            shown = np.asarray(gallery.axes[row, column].images[0].get_array())
            np.testing.assert_allclose(shown, expected[name].mean(axis=0), rtol=1e-12)
    assert gallery.axes[0, 3].get_xlabel().endswith("(mean of 3)")


def test_kernel_gallery_pixel_sequence_and_errors(image):
    gallery = viz.kernel_gallery(image, [(3, 3)], {"g": None}, kernel_size=3)
    assert gallery.axes[0, 0].get_ylabel() == "(3, 3)"
    assert list(gallery.kernels) == [("(3, 3)", "g")]
    with pytest.raises(ValueError, match="unknown options"):
        viz.kernel_gallery(image, [(3, 3)], {"g": {"sigma": 1.0}})
    with pytest.raises(ValueError, match="families"):
        viz.kernel_gallery(image, [(3, 3)], {})
    with pytest.raises(TypeError, match="pixels"):
        viz.kernel_gallery(image, (3, 3), {"g": None})


# --------------------------------------------------------------------------------------------
# CuPy arrays, lazy imports, examples


class _DeviceArray(np.ndarray):
    """Stands in for a CuPy array: only its type's module says where it lives."""


_DeviceArray.__module__ = "cupy"


def test_device_arrays_go_through_asnumpy(image, monkeypatch):
    copied = []

    def asnumpy(array):
        copied.append(array.shape)
        return np.asarray(array).view(np.ndarray)

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(asnumpy=asnumpy))
    device = image.view(_DeviceArray)
    kernel = viz.kernel_at(device, 3, (10, 10), guide=(image / 0.1).view(_DeviceArray))
    np.testing.assert_allclose(kernel, full_kernel(planar(image / 0.1), 3, (10, 10)))
    assert copied == [(3, 3, 3)]                   # only the window travels to the host
    result = viz.plot_before_after(device, device)
    assert not np.any(result.difference)
    assert type(np.asarray(result.axes[0].images[0].get_array())) is np.ndarray


def test_import_loads_neither_cupy_nor_matplotlib():
    code = ("import sys, pacarray.viz; "
            "print(sorted(m for m in ('cupy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "pacarray\[viz\]"'):
        viz.plot_before_after(np.zeros((4, 4)), np.zeros((4, 4)))


def test_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(viz, "pacarray.viz") if t.examples]
    assert len(tests) >= 4
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
