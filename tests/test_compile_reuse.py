"""The CPU backend compiles each Numba kernel once per dtype, whatever the caller's array flags."""

import numpy as np

import pacarray
from pacarray._cpu import _numba_backward as nb
from pacarray._cpu import _numba_kernels as nk
from pacarray.gradients import pac_conv_vjp


def _read_only(array):
    copy = array.copy()
    copy.flags.writeable = False
    return copy


def test_read_only_inputs_reuse_the_compiled_kernels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 7, 6))
    weight = rng.standard_normal((3, 2, 3, 3))
    guide = rng.standard_normal((1, 2, 7, 6))
    grad_y = rng.standard_normal((1, 3, 7, 6))
    options = dict(family=pacarray.Gaussian(), padding=1)

    y = pacarray.pac_conv(x, weight, guide=guide, **options)
    grads = pac_conv_vjp(grad_y, x, weight, guide=guide, **options)
    forward_count = len(nk.conv_rows.signatures)
    backward_count = len(nb.conv_backward.signatures)

    frozen = [_read_only(a) for a in (x, weight, guide, grad_y)]
    y_frozen = pacarray.pac_conv(frozen[0], frozen[1], guide=frozen[2], **options)
    grads_frozen = pac_conv_vjp(frozen[3], frozen[0], frozen[1], guide=frozen[2], **options)

    assert len(nk.conv_rows.signatures) == forward_count
    assert len(nb.conv_backward.signatures) == backward_count
    np.testing.assert_array_equal(y_frozen, y)
    for name in ("x", "weight", "guide"):
        np.testing.assert_array_equal(getattr(grads_frozen, name), getattr(grads, name))
    # the caller's arrays keep their flags: the backend only makes read-only views
    assert x.flags.writeable and not frozen[0].flags.writeable


def test_work_buffers_start_on_a_cache_line():
    """Numba aligns its arrays to 32 bytes and NumPy to 16; AVX-512 accesses need 64."""
    from pacarray._cpu._inputs import aligned_zeros

    for dtype in (np.float32, np.float64):
        for shape in [(3,), (2, 5, 7), (1, 16, 256)]:
            empty = nk.aligned_empty(shape, np.dtype(dtype))
            zeros = aligned_zeros(shape, dtype)
            for array in (empty, zeros):
                assert array.shape == shape and array.dtype == dtype
                assert array.ctypes.data % nk.CACHE_LINE == 0
                assert array.flags.c_contiguous
            assert not zeros.any()


def test_paired_patch_row_order_is_a_permutation_matching_the_kernels():
    from pacarray._cpu.backward import _patch_row_order

    for channels, taps in [(1, 9), (2, 9), (3, 4), (5, 25), (16, 25)]:
        for paired in (False, True):
            order = _patch_row_order(channels, taps, paired)
            assert sorted(order) == list(range(channels * taps))
            for j, column in enumerate(order):
                c, t = nb.patch_row_tap(j, channels, taps, paired)
                assert column == c * taps + t
            if paired and channels > 1:
                # rows 2k, 2k+1 of a pair: channels c, c+1 at one tap
                c0, t0 = nb.patch_row_tap(0, channels, taps, True)
                c1, t1 = nb.patch_row_tap(1, channels, taps, True)
                assert (c0, c1, t0, t1) == (0, 1, 0, 0)


def test_bilateral_compiles_once_for_every_layout_of_the_image():
    # The planes of a channels-last, Fortran-ordered, negative-stride or read-only image reach
    # the kernel with different Numba types; pacarray._cpu._layouts calls one general-layout
    # specialization for all of them (one per dtype), with the same result.
    import importlib

    kernels = importlib.import_module("pacarray._cpu.bilateral")
    rng = np.random.default_rng(5)
    image = rng.random((9, 11, 3)).astype(np.float32)
    options = dict(sigma_spatial=1.0, sigma_color=0.3, channel_axis=-1)
    expected = pacarray.bilateral_filter(image, **options)
    count = len(kernels.bilateral_planes.overloads)
    layouts = {
        "fortran": np.asfortranarray(image),
        "read-only": _read_only(image),
        "reversed": image[::-1, ::-1].copy()[::-1, ::-1],
        "planar": np.ascontiguousarray(image.transpose(2, 0, 1)),
    }
    for name, variant in layouts.items():
        axis = 0 if name == "planar" else -1
        result = pacarray.bilateral_filter(variant, **dict(options, channel_axis=axis))
        if axis == 0:
            result = result.transpose(1, 2, 0)
        np.testing.assert_array_equal(result, expected, err_msg=name)
    assert len(kernels.bilateral_planes.overloads) == count


def _float32_overloads(kernel):
    return sum(1 for signature in kernel.overloads if str(signature[0].dtype) == "float32")


def test_bilateral_compiles_once_per_dtype_for_every_channel_count():
    # The channel counts are runtime values of the kernels (docs/design.md §3): images and
    # volumes, channels first or last, 1 to 8 value and guide channels all run one float32
    # specialization, with the generic pac_pool path's results.
    import importlib

    from pacarray._dispatch import generic_kernels

    kernels = importlib.import_module("pacarray._cpu.bilateral")
    rng = np.random.default_rng(6)
    options = dict(sigma_spatial=1.0, sigma_color=0.5, radius=1)
    calls = []
    for channels in (1, 2, 3, 4, 5, 8):
        # (image, channel_axis, guide): a channels-last image and a channels-first volume
        calls.append((rng.random((6, 7, channels)), -1, None))
        calls.append((rng.random((channels, 4, 5, 6)), 0, None))
    for channels, guides in ((1, 3), (3, 1), (2, 8), (5, 3)):
        calls.append((rng.random((channels, 6, 7)), 0, rng.random((guides, 6, 7))))
    calls.append((rng.random((4, 5, 6, 3)), -1, rng.random((4, 5, 6, 8))))
    calls.append((rng.random((6, 7)), None, rng.random((6, 7, 3))))
    calls.append((rng.random((4, 5, 6)), None, None))
    for image, axis, guide in calls:
        image = image.astype(np.float32)
        guide = None if guide is None else guide.astype(np.float32)
        out = pacarray.bilateral_filter(image, channel_axis=axis, guide=guide, **options)
        with generic_kernels():
            expected = pacarray.bilateral_filter(image, channel_axis=axis, guide=guide, **options)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5,
                                   err_msg=f"{image.shape} {axis} {guide is not None}")
    assert _float32_overloads(kernels.bilateral_planes) == 1


def test_joint_upsample_compiles_once_per_dtype_for_every_channel_count():
    import importlib

    from pacarray._dispatch import generic_kernels

    kernels = importlib.import_module("pacarray._cpu.bilateral")
    rng = np.random.default_rng(7)
    for channels, guides, axis in ((1, 1, None), (3, 3, -1), (2, 5, 0)):
        low_shape = (3, 4) if axis is None else (3, 4, channels) if axis == -1 else (channels, 3, 4)
        guide_shape = (9, 11) if guides == 1 else (9, 11, guides) if axis in (-1, None) \
            else (guides, 9, 11)
        low = rng.random(low_shape).astype(np.float32)
        guide = rng.random(guide_shape).astype(np.float32)
        options = dict(sigma_spatial=1.0, sigma_color=0.4, channel_axis=axis)
        out = pacarray.joint_bilateral_upsample(low, guide, **options)
        with generic_kernels():
            expected = pacarray.joint_bilateral_upsample(low, guide, **options)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5, err_msg=str(low_shape))
    assert _float32_overloads(kernels.joint_upsample_rows) == 1
