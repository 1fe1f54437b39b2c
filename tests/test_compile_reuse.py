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
