"""The worked example docs/examples/fit_pac_layer.py runs and fits (loss falls >= 100x)."""

from __future__ import annotations

import numpy as np
import pytest

from _examples import example_module


@pytest.fixture(scope="module")
def example():
    with example_module("fit_pac_layer.py") as module:
        yield module


def _photo_crop():
    """A small crop of a real photograph (the bundled sample, else scikit-image's copy)."""
    try:
        from pacarray.data import sample_image
        image = sample_image()
    except ImportError:
        data = pytest.importorskip("skimage.data")
        image = data.astronaut()
    return np.asarray(image)[160:184, 190:214]


def test_fit_recovers_the_layer_and_the_loss_falls_100x(example):
    import numba

    crop = _photo_crop()
    threads = numba.get_num_threads()
    # A 24 x 24 crop is far too small to share between threads: every parallel region would
    # cost more in thread hand-offs (against SciPy's BLAS calls between them) than it saves.
    numba.set_num_threads(1)
    try:
        result = example.fit(crop, max_iterations=40)
    finally:
        numba.set_num_threads(threads)
    assert np.isfinite(result.final_loss)
    assert result.initial_loss / result.final_loss >= 100.0
    # the kernel parameters move from their wrong start towards the values behind the target
    assert abs(result.alpha - example.TRUE_ALPHA) < 0.5 * abs(example.START_ALPHA
                                                              - example.TRUE_ALPHA)
    assert abs(result.lambda_ - example.TRUE_LAMBDA) < 0.5 * abs(example.START_LAMBDA
                                                                 - example.TRUE_LAMBDA)


def test_the_example_gradient_is_exact(example):
    """The objective handed to SciPy has the gradient finite differences see."""
    from pacarray import InversePower, pac_conv
    from pacarray.gradients import pac_conv_vjp
    from pacarray.testing import check_gradients

    image = _photo_crop()[:10, :12].astype(np.float64) / 255.0
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
    options = example.layer_options(x)
    weight = np.random.default_rng(0).standard_normal((2, 3, 5, 5))

    def layer(weight, alpha, lambda_):
        family = InversePower(alpha, lambda_, eps=example.EPS)
        return pac_conv(x, weight, family=family, **options)

    def layer_vjp(grad, weight, alpha, lambda_):
        family = InversePower(alpha, lambda_, eps=example.EPS)
        return pac_conv_vjp(grad, x, weight, family=family, **options,
                            wrt=("weight", "alpha", "lambda_"))

    report = check_gradients(layer, layer_vjp, dict(weight=weight, alpha=0.3, lambda_=-0.8),
                             step=1e-4)
    assert report.passed, report
