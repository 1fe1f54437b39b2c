"""PAC-CRF on volumes (``spatial_ndim=3``) and signals: against the N-D oracle of
tests/reference.py, the 2-D path, finite differences and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from pacarray.crf import PairwiseTerm, pac_crf, pac_crf_vjp
from pacarray.testing import check_gradients

from reference import ref_kernel, ref_pool, ref_spatial_window

TERMS = [
    PairwiseTerm(weight=0.8, kernel_size=3, sigma_spatial=(1.0, 2.0, 1.5), sigma_color=0.3),
    PairwiseTerm(weight=0.5, kernel_size=(3, 3, 5), dilation=(2, 1, 2), sigma_spatial=None,
                 features="smoothness"),
]


def oracle_crf(unary, image, terms, num_steps, compatibility=None):
    """One volume, float64: unary (L, D, H, W), image (C, D, H, W). Each message is the
    reference pac_pool of Q with the reference Gaussian kernel, centre tap zeroed."""
    labels = unary.shape[0]
    rank = unary.ndim - 1
    mu = 1.0 - np.eye(labels) if compatibility is None else compatibility
    q = np.exp(unary - unary.max(axis=0))
    q /= q.sum(axis=0)
    for _ in range(num_steps):
        pairwise = np.zeros_like(q)
        for term in terms:
            k = np.broadcast_to(term.kernel_size, rank)
            d = np.broadcast_to(term.dilation, rank)
            spatial = ref_spatial_window(tuple(k), term.sigma_spatial, dilation=tuple(d))
            spatial[tuple(k // 2)] = 0.0
            padding = tuple(d * (k // 2))
            if term.features == "smoothness":
                guide, family = np.zeros((1, 1, *unary.shape[1:])), None
            else:
                guide, family = image[None] / term.sigma_color, "gaussian"
            K, _ = ref_kernel(guide, tuple(k), padding=padding, dilation=tuple(d),
                              family=family, spatial_weight=spatial)
            message = ref_pool(q[None], K, padding=padding, dilation=tuple(d))[0]
            pairwise += term.weight * message
        logits = unary - np.einsum("ab,b...->a...", mu, pairwise)
        q = np.exp(logits - logits.max(axis=0))
        q /= q.sum(axis=0)
    return q


# float32 compiles the N-D kernels once more (tens of seconds cold): the slow tier.
@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.slow)])
def test_volume_matches_the_nd_oracle(dtype, rng, assert_close):
    unary = rng.normal(size=(3, 4, 6, 7))
    image = rng.random((4, 6, 7, 2))
    compat = rng.normal(size=(3, 3))
    expected = oracle_crf(unary, image.transpose(3, 0, 1, 2), TERMS, 2, compat)
    got = pac_crf(unary.astype(dtype), image.astype(dtype), pairwise=TERMS, num_steps=2,
                  compatibility=compat, spatial_ndim=3)
    assert got.dtype == dtype and got.shape == unary.shape
    assert_close(got, expected, dtype)
    # Channels last and a batch axis give the same marginals.
    batched = pac_crf(np.moveaxis(unary, 0, -1)[None].astype(dtype), image[None].astype(dtype),
                      pairwise=TERMS, num_steps=2, compatibility=compat, spatial_ndim=3,
                      label_axis=-1)
    assert_close(np.moveaxis(batched[0], -1, 0), expected, dtype)


def test_depth_one_equals_the_image_result(rng):
    unary = rng.normal(size=(3, 6, 7))
    image = rng.random((6, 7, 3))
    terms = [PairwiseTerm(weight=1.2, kernel_size=3, sigma_spatial=2.0, sigma_color=0.3),
             PairwiseTerm(weight=0.7, kernel_size=(3, 5), dilation=(1, 2), sigma_spatial=None)]
    flat = pac_crf(unary, image, pairwise=terms, num_steps=3)
    # A depth window of 1 tap and the default: the same message in a depth-1 volume.
    terms3 = [PairwiseTerm(weight=1.2, kernel_size=3, sigma_spatial=2.0, sigma_color=0.3),
              PairwiseTerm(weight=0.7, kernel_size=(1, 3, 5), dilation=(1, 1, 2),
                           sigma_spatial=None)]
    volume = pac_crf(unary[:, None], image[None], pairwise=terms3, num_steps=3, spatial_ndim=3)
    np.testing.assert_allclose(volume[:, 0], flat, rtol=1e-10, atol=1e-12)
    default = pac_crf(unary[:, None], image[None], spatial_ndim=3, output="log")
    np.testing.assert_allclose(default[:, 0], pac_crf(unary, image, output="log"),
                               rtol=1e-10, atol=1e-12)
    grad = rng.normal(size=unary.shape)
    g2 = pac_crf_vjp(grad, unary, image, pairwise=terms, num_steps=2)
    g3 = pac_crf_vjp(grad[:, None], unary[:, None], image[None], pairwise=terms3, num_steps=2,
                     spatial_ndim=3)
    np.testing.assert_allclose(g3.unary[:, 0], g2.unary, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g3.weights, g2.weights, rtol=1e-10)


def test_signal(rng):
    unary = rng.normal(size=(2, 9))
    signal = rng.random(9)
    term = PairwiseTerm(weight=1.0, kernel_size=3, sigma_spatial=1.0, sigma_color=0.5)
    got = pac_crf(unary, signal, pairwise=term, num_steps=2, spatial_ndim=1, channel_axis=None)
    expected = oracle_crf(unary, signal[None], [term], 2)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_volume_gradients_match_finite_differences(rng):
    unary = rng.normal(size=(3, 3, 4, 5))
    image = rng.random((3, 4, 5, 2))

    def function(unary, weights, compatibility):
        terms = [PairwiseTerm(**{**vars(t), "weight": w}) for t, w in zip(TERMS, weights)]
        return pac_crf(unary, image, pairwise=terms, num_steps=2, compatibility=compatibility,
                       spatial_ndim=3, output="log")

    def vjp(grad_output, unary, weights, compatibility):
        terms = [PairwiseTerm(**{**vars(t), "weight": w}) for t, w in zip(TERMS, weights)]
        grads = pac_crf_vjp(grad_output, unary, image, pairwise=terms, num_steps=2,
                            compatibility=compatibility, spatial_ndim=3, output="log")
        return {"unary": grads.unary, "weights": np.asarray(grads.weights),
                "compatibility": grads.compatibility}

    inputs = {"unary": unary, "weights": np.array([t.weight for t in TERMS]),
              "compatibility": rng.normal(size=(3, 3))}
    report = check_gradients(function, vjp, inputs, tolerance=1e-6, directions=2)
    assert report.passed, str(report)


def test_bad_volume_input(rng):
    unary = rng.normal(size=(3, 4, 6, 7))
    image = rng.random((4, 6, 7, 2))
    with pytest.raises(ValueError, match="spatial_ndim"):
        pac_crf(rng.normal(size=(3, 2, 4, 6, 7)), spatial_ndim=4, pairwise=TERMS[1])
    with pytest.raises(ValueError, match="unary must have 4 dimensions"):
        pac_crf(rng.normal(size=(3, 2, 2, 4, 6, 7)), spatial_ndim=3, pairwise=TERMS[1])
    with pytest.raises(ValueError, match="image spatial shape"):
        pac_crf(unary, image[:, :5], pairwise=TERMS, spatial_ndim=3)
    with pytest.raises(ValueError, match="image must be"):
        pac_crf(unary, image[0], pairwise=TERMS, spatial_ndim=3)
    with pytest.raises(ValueError, match=r"pairwise\[0\]\.kernel_size"):
        pac_crf(unary, image, pairwise=PairwiseTerm(kernel_size=(3, 3)), spatial_ndim=3)
    with pytest.raises(ValueError, match=r"pairwise\[0\]\.sigma_spatial"):
        pac_crf(unary, image, pairwise=PairwiseTerm(sigma_spatial=(1.0, 2.0)), spatial_ndim=3)
    with pytest.raises(ValueError, match=r"pairwise\[0\]\.blur"):
        pac_crf(unary, image, pairwise=PairwiseTerm(blur=2), spatial_ndim=3)


def test_volume_feature_array_equals_the_appearance_term(rng):
    unary = rng.normal(size=(3, 3, 4, 5))
    image = rng.random((3, 4, 5, 2))
    appearance = PairwiseTerm(weight=1.0, kernel_size=3, sigma_spatial=1.5, sigma_color=0.4)
    features = PairwiseTerm(weight=1.0, kernel_size=3, sigma_spatial=1.5,
                            features=np.moveaxis(image, -1, 0) / 0.4)
    expected = pac_crf(unary, image, pairwise=appearance, num_steps=2, spatial_ndim=3)
    got = pac_crf(unary, pairwise=features, num_steps=2, spatial_ndim=3)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"pairwise\[0\]\.features"):
        pac_crf(unary[:, :2], pairwise=features, spatial_ndim=3)
