"""PAC-CRF quality: the default terms against the oracle, the IoU protocol of the segmentation
guide on a small photograph, and the weight-fitting example docs/examples/fit_crf_weights.py."""

from __future__ import annotations

import numpy as np
import pytest

from pacarray.benchmarks import crf as protocol
from pacarray.crf import DEFAULT_PAIRWISE, FAST_PAIRWISE, pac_crf

from _examples import example_module
from test_crf import oracle_crf


def _sample(factor):
    from pacarray.data import sample_image

    image = np.asarray(sample_image(), dtype=np.float64) / 255.0
    size = image.shape[0] // factor
    return image.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_default_terms_match_the_oracle(dtype, assert_close):
    """The default terms against the float64 oracle through the fused CPU step: on a 24 x 60
    image the dilations 16 and 48 reach partly inside, 192 falls wholly outside."""
    rng = np.random.default_rng(3)
    image = _sample(4)[40:64, 20:80].astype(dtype)
    unary = rng.normal(0.0, 1.5, (3, 24, 60)).astype(dtype)
    expected, _ = oracle_crf(unary, image.transpose(2, 0, 1), DEFAULT_PAIRWISE, 2)
    assert_close(pac_crf(unary, image, num_steps=2), expected, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fast_terms_match_the_oracle(dtype, assert_close):
    """FAST_PAIRWISE (3x3, 1x3 and 3x1 windows) against the float64 oracle on a 24 x 60 crop:
    the dilation-48 crosses reach inside horizontally only."""
    rng = np.random.default_rng(6)
    image = _sample(4)[40:64, 20:80].astype(dtype)
    unary = rng.normal(0.0, 1.5, (3, 24, 60)).astype(dtype)
    expected, _ = oracle_crf(unary, image.transpose(2, 0, 1), FAST_PAIRWISE, 2)
    assert_close(pac_crf(unary, image, num_steps=2, pairwise=FAST_PAIRWISE), expected, dtype)


def test_kmeans_and_degradation_protocol():
    """The protocol's pieces do what the guide says on a small crop: k-means labels follow the
    colours, the degraded unary is worse than the truth, and the default CRF recovers IoU."""
    image = _sample(4).astype(np.float32)  # 128 x 128
    truth = protocol.kmeans_labels(image, 4)
    assert set(np.unique(truth)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(truth, protocol.kmeans_labels(image, 4))  # seeded
    unary = protocol.degraded_unary(truth, 4, factor=8, noise=2.0)
    assert unary.shape == (4, 128, 128) and unary.dtype == np.float32
    np.testing.assert_allclose(np.exp(unary).sum(axis=0), 1.0, rtol=1e-5)
    before = protocol.mean_iou(unary.argmax(axis=0), truth, 4)
    assert protocol.mean_iou(truth, truth, 4) == 1.0
    assert before < 0.7
    after = protocol.mean_iou(pac_crf(unary, image, output="labels"), truth, 4)
    assert after >= before + 0.15, (before, after)


@pytest.fixture(scope="module")
def example():
    with example_module("fit_crf_weights.py") as module:
        yield module


def test_fitting_the_weights_improves_held_out_iou(example):
    """The example, at small sizes: the training loss falls and the held-out IoU of the
    fitted weights beats that of the start weights (crops from disjoint halves)."""
    image = example.photograph(factor=4)  # 128 x 128
    train = example.make_examples(image[:, :64], crop=48, count=2, seed=0)
    held_out = example.make_examples(image[:, 64:], crop=48, count=2, seed=1)
    result = example.fit(train, held_out, iterations=8, learning_rate=1.0)
    assert result.losses[-1] < 0.95 * result.losses[0]
    assert result.train_iou[1] > result.train_iou[0]
    _, start, fitted = result.held_out_iou
    assert fitted >= start + 0.02, result.held_out_iou


def test_the_example_gradient_is_exact(example):
    """The weight gradient the example descends is the one finite differences see."""
    image = example.photograph(factor=8)[:24, :24]
    (data,) = example.make_examples(image, crop=24, count=1, seed=2)
    weights = np.array([0.7, 0.4, 0.3])
    _, gradient = example.loss_and_gradient([data], weights)
    step = 1e-2
    for index in range(len(weights)):
        shift = np.zeros_like(weights)
        shift[index] = step
        plus, _ = example.loss_and_gradient([data], weights + shift)
        minus, _ = example.loss_and_gradient([data], weights - shift)
        assert abs((plus - minus) / (2 * step) - gradient[index]) < 2e-3 * max(
            1.0, abs(gradient[index])), index
