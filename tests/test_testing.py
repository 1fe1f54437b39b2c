"""pacarray.testing: the finite-difference checker and the dot-product test catch what they must."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import pacarray.testing
from pacarray import pac_pool, spatial_window
from pacarray.gradients import pac_pool_vjp
from pacarray.testing import GradientReport, check_gradients, dot_product_test


def sine_product(a, b, label="ignored"):
    """A nonlinear function of an array and a scalar."""
    return np.sin(a) * b**2


def sine_product_vjp(g, a, b, label="ignored"):
    return {"a": g * np.cos(a) * b**2, "b": float(np.sum(g * np.sin(a) * 2 * b))}


def test_correct_gradients_pass_with_tiny_errors(rng):
    inputs = dict(a=rng.standard_normal((3, 4)), b=1.3, label="text")
    report = check_gradients(sine_product, sine_product_vjp, inputs)
    assert set(report.errors) == {"a", "b"}          # strings are not checked
    assert report.passed and report.max_error < 1e-9
    assert all(len(pairs) == 3 for pairs in report.values.values())


@pytest.mark.parametrize("scale", [1.001, -1.0, 0.0])
def test_wrong_magnitude_or_sign_is_reported(scale, rng):
    def wrong_vjp(g, a, b):
        grads = sine_product_vjp(g, a, b)
        return {"a": scale * grads["a"], "b": grads["b"]}

    report = check_gradients(sine_product, wrong_vjp, dict(a=rng.standard_normal(5), b=0.7))
    assert report.errors["b"] < 1e-9
    assert report.errors["a"] >= min(abs(1 - scale), 1.0) * 0.5
    assert not report.passed
    assert "FAILED" in str(report) and "a" in str(report)


def test_a_single_wrong_entry_is_found(rng):
    """Random directions see an error confined to one element of a large gradient."""
    def wrong_vjp(g, a, b):
        grads = sine_product_vjp(g, a, b)
        grads["a"] = grads["a"].copy()
        grads["a"][2, 3] *= -1.0
        return grads

    inputs = dict(a=rng.standard_normal((6, 7)), b=1.1)
    assert not check_gradients(sine_product, wrong_vjp, inputs).passed


def test_attribute_results_and_wrt_selection(rng):
    from collections import namedtuple

    Grads = namedtuple("Grads", "a b")

    def vjp(g, a, b):
        return Grads(**sine_product_vjp(g, a, b))

    report = check_gradients(sine_product, vjp, dict(a=rng.standard_normal(4), b=2.0), wrt="a")
    assert list(report.errors) == ["a"] and report.passed


def test_inputs_are_converted_to_float64_copies_and_left_untouched(rng):
    a = rng.standard_normal(6).astype(np.float32)
    original = a.copy()
    seen = []

    def function(a, b):
        seen.append(a.dtype)
        return sine_product(a, b)

    check_gradients(function, sine_product_vjp, dict(a=a, b=np.float32(0.5)))
    assert set(seen) == {np.dtype(np.float64)}
    np.testing.assert_array_equal(a, original)
    assert a.dtype == np.float32


def test_bad_vjp_results_raise(rng):
    inputs = dict(a=rng.standard_normal(3), b=1.0)
    with pytest.raises(ValueError, match="no gradient for input 'b'"):
        check_gradients(sine_product, lambda g, a, b: {"a": g}, inputs)
    with pytest.raises(ValueError, match="'a' has shape"):
        check_gradients(sine_product, lambda g, a, b: {"a": g[:2], "b": 0.0}, inputs)
    with pytest.raises(ValueError, match="not in inputs"):
        check_gradients(sine_product, sine_product_vjp, inputs, wrt=["c"])
    with pytest.raises(ValueError, match="no float"):
        check_gradients(sine_product, sine_product_vjp, dict(a=np.arange(3), b=1))


def test_results_are_reproducible_with_a_seed(rng):
    inputs = dict(a=rng.standard_normal((2, 3)), b=0.9)
    first = check_gradients(sine_product, sine_product_vjp, inputs, seed=5)
    second = check_gradients(sine_product, sine_product_vjp, inputs, seed=5)
    assert first.values == second.values


def test_dot_product_test_accepts_a_true_adjoint_and_rejects_a_wrong_one(rng):
    matrix = rng.standard_normal((4, 3))
    offset = rng.standard_normal(4)

    def affine(u, bias):
        return matrix @ u + bias

    inputs = dict(u=rng.standard_normal(3), bias=offset)
    right = dot_product_test(affine, lambda g, u, bias: {"u": matrix.T @ g, "bias": g}, inputs)
    assert right.passed and right.max_error < 1e-13
    assert set(right.errors) == {"u", "bias"}
    wrong = dot_product_test(affine,
                             lambda g, u, bias: {"u": matrix[:3].T @ g[:3], "bias": g}, inputs)
    assert wrong.errors["u"] > 1e-3 and wrong.errors["bias"] < 1e-13 and not wrong.passed


def test_report_properties():
    report = GradientReport({"x": 1e-9, "w": 2e-6}, tolerance=1e-6)
    assert report.max_error == 2e-6 and not report.passed
    assert GradientReport({}, tolerance=1e-6).passed
    text = str(report)
    assert "x" in text and "ok" in text and "FAILED" in text


def test_checks_a_user_composition_a_self_guided_bilateral_filter(rng):
    """The bilateral filter ``pac_pool(image, guide=image / sigma)``: image enters twice."""
    sigma = 0.3
    window = spatial_window(5, 1.5)

    def bilateral(image):
        return pac_pool(image, 5, guide=image / sigma, padding=2, normalize="kernel",
                        spatial_weight=window)

    def bilateral_vjp(grad, image):
        g = pac_pool_vjp(grad, image, 5, guide=image / sigma, padding=2, normalize="kernel",
                         spatial_weight=window, wrt=("x", "guide"))
        return {"image": g.x + g.guide / sigma}

    def forgetting_the_guide(grad, image):
        g = pac_pool_vjp(grad, image, 5, guide=image / sigma, padding=2, normalize="kernel",
                         spatial_weight=window, wrt="x")
        return {"image": g.x}

    inputs = dict(image=rng.random((1, 1, 9, 10)))
    assert check_gradients(bilateral, bilateral_vjp, inputs, step=1e-4).passed
    assert not check_gradients(bilateral, forgetting_the_guide, inputs).passed


def test_docstring_examples_run():
    result = doctest.testmod(pacarray.testing)
    assert result.attempted > 0 and result.failed == 0
