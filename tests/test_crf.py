"""PAC-CRF mean-field inference: oracle, layouts, refinement quality on a photograph, errors."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import scipy.ndimage as ndi

import pacarray._cpu as cpu
import pacarray._cpu._scratch as scratch_arrays
import pacarray.crf as crf
from pacarray import _dispatch, _palette
from pacarray.crf import (
    DEFAULT_PAIRWISE,
    FAST_PAIRWISE,
    PairwiseTerm,
    PaletteTerm,
    pac_crf,
    pac_crf_vjp,
)
from pacarray.features import color_position_features
from pacarray.testing import check_gradients

from reference import oracle_palette_message

# --------------------------------------------------------------------------------------------
# A direct NumPy implementation of the update, written from the formulas with explicit loops


def oracle_block_mean(array, factor):
    """Mean of each factor x factor block over the pixels it contains (last two axes)."""
    height, width = array.shape[-2:]
    low_h, low_w = math.ceil(height / factor), math.ceil(width / factor)
    out = np.zeros((*array.shape[:-2], low_h, low_w))
    for by in range(low_h):
        for bx in range(low_w):
            block = array[..., by * factor:(by + 1) * factor, bx * factor:(bx + 1) * factor]
            out[..., by, bx] = block.mean(axis=(-2, -1))
    return out


def oracle_upsample(array, shape, factor, features=None, coarse_features=None):
    """Bilinear interpolation; full-resolution pixel y sits at coarse coordinate
    (y + 0.5) / factor - 0.5, clamped to the coarse grid. With features (joint-bilateral
    upsampling), each of the four cells' bilinear weight is multiplied by
    exp(-|f_pixel - f_cell|^2 / 2) + 1e-3 and the four are normalized to sum to 1."""
    low_h, low_w = array.shape[-2:]
    out = np.zeros((*array.shape[:-2], *shape))
    for y in range(shape[0]):
        cy = min(max((y + 0.5) / factor - 0.5, 0.0), low_h - 1)
        y0 = int(math.floor(cy))
        y1, wy = min(y0 + 1, low_h - 1), cy - math.floor(cy)
        for x in range(shape[1]):
            cx = min(max((x + 0.5) / factor - 0.5, 0.0), low_w - 1)
            x0 = int(math.floor(cx))
            x1, wx = min(x0 + 1, low_w - 1), cx - math.floor(cx)
            cells = [((1 - wy) * (1 - wx), y0, x0), ((1 - wy) * wx, y0, x1),
                     (wy * (1 - wx), y1, x0), (wy * wx, y1, x1)]
            if features is not None:
                cells = [
                    (w * (math.exp(-0.5 * float(np.sum(
                        (features[:, y, x] - coarse_features[:, cy_, cx_]) ** 2))) + 1e-3),
                     cy_, cx_)
                    for w, cy_, cx_ in cells
                ]
            total = sum(w for w, _, _ in cells)
            out[..., y, x] = sum(w / total * array[..., cy_, cx_] for w, cy_, cx_ in cells)
    return out


def oracle_message(q, features, kernel_size, dilation, sigma_spatial):
    """m[l, i] = sum over window taps j != i inside the image of
    exp(-|p_i - p_j|^2 / (2 sigma^2)) * exp(-|f_i - f_j|^2 / 2) * q[l, j]."""
    labels, height, width = q.shape
    kh, kw = kernel_size
    dy, dx = dilation
    out = np.zeros_like(q)
    for y in range(height):
        for x in range(width):
            for a in range(kh):
                for b in range(kw):
                    oy, ox = (a - kh // 2) * dy, (b - kw // 2) * dx
                    qy, qx = y + oy, x + ox
                    if (oy, ox) == (0, 0) or not (0 <= qy < height and 0 <= qx < width):
                        continue
                    weight = 1.0
                    if sigma_spatial is not None:
                        weight = math.exp(-(oy * oy + ox * ox) / (2 * sigma_spatial**2))
                    if features is not None:
                        diff = features[:, y, x] - features[:, qy, qx]
                        weight *= math.exp(-0.5 * float(diff @ diff))
                    out[:, y, x] += weight * q[:, qy, qx]
    return out


def oracle_softmax(logits):
    shifted = logits - logits.max(axis=0)
    e = np.exp(shifted)
    return e / e.sum(axis=0)


def oracle_palette(term, features):
    """The palette ``(P, F)`` of a :class:`PaletteTerm` for one image's features ``(F, *S)``
    (unit bandwidth): the term's own palette in those units, or the library's k-means
    (``pacarray._palette.palette_colors``, an input of the message, not part of its math) of
    the strided subsample of the features."""
    features = np.asarray(features, np.float64)
    if term.palette is not None:
        palette = np.asarray(term.palette, np.float64)
        return palette / term.sigma_color if isinstance(term.features, str) else palette
    stride = _palette.sample_stride(features.shape[1:])
    sample = features[(slice(None),) + (slice(None, None, stride),) * (features.ndim - 1)]
    return _palette.palette_colors(sample, term.colors)


def oracle_crf(unary, image, terms, num_steps, compatibility=None, unary_weight=1.0):
    """One image, float64: unary (L, H, W) logits, image (C, H, W) on [0, 1] or None.

    Potts is written out literally as mu = 1 - I. A :class:`PaletteTerm` sends
    ``reference.oracle_palette_message`` (any rank: unary (L, *S), image (C, *S)); its
    features and palette are for this one image."""
    unary = np.asarray(unary, np.float64)
    labels = unary.shape[0]
    mu = 1.0 - np.eye(labels) if compatibility is None else np.asarray(compatibility, float)
    q = oracle_softmax(unary_weight * unary)
    logits = unary_weight * unary
    for _ in range(num_steps):
        pairwise = np.zeros_like(q)
        for term in terms:
            if isinstance(term.features, str):
                features = None if term.features == "smoothness" else image / term.sigma_color
            else:
                features = np.asarray(term.features, np.float64)
            if isinstance(term, PaletteTerm):
                # The features as the library sees them: a float32 image divided in float32.
                palette = oracle_palette(term, features)
                pairwise += term.weight * oracle_palette_message(
                    q, features, palette, term.sigma_spatial, term.grid_cell)
                continue
            kernel_size = np.broadcast_to(term.kernel_size, 2)
            dilation = np.broadcast_to(term.dilation, 2)
            b = term.blur
            if b == 1:
                message = oracle_message(q, features, kernel_size, dilation, term.sigma_spatial)
            else:
                coarse_q = oracle_block_mean(q, b)
                coarse_f = None if features is None else oracle_block_mean(features, b)
                sigma = None if term.sigma_spatial is None else term.sigma_spatial / b
                coarse = oracle_message(coarse_q, coarse_f, kernel_size, dilation, sigma)
                message = b * b * oracle_upsample(coarse, q.shape[1:], b, features, coarse_f)
            pairwise += term.weight * message
        logits = unary_weight * unary - np.einsum("ab,b...->a...", mu, pairwise)
        q = oracle_softmax(logits)
    return q, logits


# --------------------------------------------------------------------------------------------
# Oracle tests


@pytest.fixture(params=["cpu_kernels", "cpu_recompute", "pac_pool"])
def path(request, monkeypatch):
    """Run each oracle test through the dedicated CPU kernels (with the pairwise weights
    computed once per call, and recomputed at every step as beyond the cache's memory budget)
    and through the generic pac_pool path that CuPy arrays take (the backend's CRF entry points
    routed to pacarray._generic)."""
    if request.param == "pac_pool":
        with _dispatch.generic_kernels():
            yield request.param
        return
    if request.param == "cpu_recompute":
        monkeypatch.setattr(cpu, "CRF_WEIGHT_CACHE_BYTES", 0)
        monkeypatch.setattr(cpu, "CRF_WEIGHT_CACHE_UNARIES", 0)
    yield request.param


TERM_SETS = {
    "appearance": [PairwiseTerm(weight=1.5, kernel_size=3, dilation=1, sigma_spatial=2.0,
                                sigma_color=0.3)],
    "appearance+smoothness": [
        PairwiseTerm(weight=0.8, kernel_size=(5, 3), dilation=(2, 1), sigma_spatial=3.0,
                     sigma_color=0.25),
        PairwiseTerm(weight=0.5, kernel_size=3, sigma_spatial=None, features="smoothness"),
    ],
    "blurred": [
        PairwiseTerm(weight=0.7, kernel_size=3, sigma_spatial=4.0, sigma_color=0.4, blur=2),
        PairwiseTerm(weight=0.3, kernel_size=3, sigma_spatial=1.5, features="smoothness",
                     blur=3),
    ],
}


@pytest.mark.parametrize("num_steps", [1, 3])
@pytest.mark.parametrize("terms", list(TERM_SETS), ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_oracle(path, terms, num_steps, dtype, rng, assert_close):
    labels, height, width = 4, 9, 11  # odd sizes: partial blocks when blurred
    unary = rng.normal(0.0, 1.5, (labels, height, width)).astype(dtype)
    image = rng.random((height, width, 3)).astype(dtype)
    expected, _ = oracle_crf(unary, image.transpose(2, 0, 1), TERM_SETS[terms], num_steps)
    result = pac_crf(unary, image, num_steps=num_steps, pairwise=TERM_SETS[terms])
    assert_close(result, expected, dtype)
    # Property: marginals are distributions, and the pairwise terms changed the unary's softmax.
    np.testing.assert_allclose(result.sum(axis=0), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert np.abs(result - oracle_softmax(unary.astype(np.float64))).max() > 1e-3


def test_guided_upsampling_weights():
    """Blurred terms' upsampling: with a flat image it is bilinear interpolation; at a vertical
    edge a pixel takes almost all of its message from the cells on its own side."""
    from pacarray import _mean_field

    rng = np.random.default_rng(2)
    coarse = rng.random((1, 2, 3, 4))
    flat = np.full((1, 3, 12, 16), 0.7)
    weights = _mean_field.upsample_weights(np, flat, _mean_field.block_mean(np, flat, 4), 4,
                                           (1, 12, 16), np.dtype(np.float64))
    guided = _mean_field.upsample_add(np, coarse, *weights, np.zeros((1, 2, 12, 16)))
    np.testing.assert_allclose(guided, oracle_upsample(coarse, (12, 16), 4), rtol=1e-12)

    edge = np.zeros((1, 1, 12, 16))
    edge[..., 6:] = 10.0  # unit bandwidth: the two sides are far apart
    weights, rows, cols = _mean_field.upsample_weights(
        np, edge, _mean_field.block_mean(np, edge, 4), 4, (1, 12, 16), np.dtype(np.float64))
    # Column 5 (dark) lies between cells 0 (dark) and 1 (mixed, mean 5), column 6 (bright)
    # between cells 1 and 2 (bright); bilinear would give the mixed cell 7/8 of each.
    assert (cols[0, 5], cols[1, 5], cols[0, 6], cols[1, 6]) == (0, 1, 1, 2)
    left = weights[0, 0, :, 5] + weights[0, 2, :, 5]
    right = weights[0, 1, :, 6] + weights[0, 3, :, 6]
    assert left.min() > 0.99 and right.min() > 0.99, (left, right)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrix_compatibility_user_features_and_unary_weight(path, dtype, rng, assert_close):
    labels, height, width = 3, 8, 10
    unary = rng.normal(0.0, 1.0, (labels, height, width)).astype(dtype)
    features = rng.random((2, height, width)).astype(dtype) * 3.0
    compatibility = rng.normal(0.0, 1.0, (labels, labels))
    terms = [PairwiseTerm(weight=0.6, kernel_size=5, dilation=1, sigma_spatial=None,
                          features=features)]
    expected, logits = oracle_crf(unary, None, terms, 2, compatibility, unary_weight=0.7)
    result = pac_crf(unary, None, num_steps=2, pairwise=terms, compatibility=compatibility,
                     unary_weight=0.7)
    assert_close(result, expected, dtype)
    log_result = pac_crf(unary, None, num_steps=2, pairwise=terms, output="log",
                         compatibility=compatibility, unary_weight=0.7)
    expected_log = logits - logits.max(axis=0) - np.log(
        np.exp(logits - logits.max(axis=0)).sum(axis=0))
    assert_close(log_result, expected_log, dtype)


def test_potts_equals_its_matrix(rng):
    unary = rng.normal(size=(3, 12, 12))
    image = rng.random((12, 12, 3))
    potts = pac_crf(unary, image)
    matrix = pac_crf(unary, image, compatibility=1.0 - np.eye(3))
    np.testing.assert_allclose(potts, matrix, rtol=1e-12, atol=1e-14)


def test_zero_steps_and_zero_weight_give_the_softmax(rng):
    unary = rng.normal(size=(4, 6, 7))
    expected = oracle_softmax(2.0 * unary)
    np.testing.assert_allclose(pac_crf(unary, None, num_steps=0, unary_weight=2.0,
                                       pairwise=[]), expected, rtol=1e-12)
    image = rng.random((6, 7, 3))
    silent = [PairwiseTerm(weight=0.0)]
    np.testing.assert_allclose(pac_crf(unary, image, pairwise=silent, unary_weight=2.0),
                               expected, rtol=1e-12)


def test_appearance_term_equals_colour_position_features(rng):
    """The appearance term (colour in the guide, position in the spatial window) equals a user
    feature term on the joint (colour, position) stack, by the factorization of the Gaussian."""
    unary = rng.normal(size=(3, 10, 11))
    image = rng.random((10, 11, 3))
    appearance = PairwiseTerm(weight=1.3, kernel_size=5, dilation=2, sigma_spatial=2.5,
                              sigma_color=0.2)
    stack = color_position_features(image, sigma_spatial=2.5, sigma_color=0.2, channel_axis=-1)
    joint = PairwiseTerm(weight=1.3, kernel_size=5, dilation=2, sigma_spatial=None,
                         features=stack)
    np.testing.assert_allclose(pac_crf(unary, image, pairwise=[appearance]),
                               pac_crf(unary, None, pairwise=[joint]), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Layouts, dtypes, inputs and outputs


def test_layouts_batch_and_outputs(rng):
    unary = rng.normal(size=(2, 3, 10, 12))  # (N, L, H, W)
    image = rng.random((2, 10, 12, 3))  # (N, H, W, C)
    batched = pac_crf(unary, image)
    assert batched.shape == unary.shape and batched.dtype == np.float64
    for n in range(2):
        np.testing.assert_allclose(pac_crf(unary[n], image[n]), batched[n], rtol=1e-12)
    channels_last = pac_crf(np.moveaxis(unary, 1, -1), np.moveaxis(image, -1, 1),
                            label_axis=-1, channel_axis=1)
    np.testing.assert_allclose(channels_last, np.moveaxis(batched, 1, -1), rtol=1e-12)
    labels = pac_crf(unary, image, output="labels")
    assert labels.shape == (2, 10, 12) and labels.dtype == np.intp
    np.testing.assert_array_equal(labels, batched.argmax(axis=1))
    log_q = pac_crf(unary, image, output="log")
    np.testing.assert_allclose(np.exp(log_q), batched, rtol=1e-10)


def test_grayscale_uint8_and_dtype_policy(rng):
    unary = rng.normal(size=(3, 9, 9)).astype(np.float32)
    image8 = rng.integers(0, 256, (9, 9), dtype=np.uint8)
    from_uint8 = pac_crf(unary, image8, channel_axis=None)
    from_float = pac_crf(unary, image8.astype(np.float32) / 255, channel_axis=None)
    assert from_uint8.dtype == np.float32
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-6, atol=1e-7)
    assert pac_crf(unary.astype(np.float16), image8, channel_axis=None).dtype == np.float32
    assert pac_crf(unary.astype(np.int16), image8, channel_axis=None).dtype == np.float32
    assert pac_crf(unary, image8.astype(np.float64) / 255, channel_axis=None).dtype == np.float64


def test_probability_input(rng):
    probabilities = rng.dirichlet(np.ones(3), size=(8, 8)).transpose(2, 0, 1)
    probabilities[0, 0, 0], probabilities[1, 0, 0] = 0.0, probabilities[:2, 0, 0].sum()
    image = rng.random((8, 8, 3))
    floored = np.log(np.maximum(probabilities, crf.PROBABILITY_FLOOR))
    np.testing.assert_allclose(pac_crf(probabilities, image, input="probabilities"),
                               pac_crf(floored, image), rtol=1e-12)


def test_inputs_are_not_written(rng):
    unary = rng.normal(size=(3, 8, 8)).astype(np.float32)
    image = rng.random((8, 8, 3)).astype(np.float32)
    copies = unary.copy(), image.copy()
    pac_crf(unary, image, pairwise=[PairwiseTerm(blur=2)])
    np.testing.assert_array_equal(unary, copies[0])
    np.testing.assert_array_equal(image, copies[1])


def test_memory_stays_linear_in_labels_times_pixels(path):
    """No per-tap array beyond the weight cache's budget: with 2 labels and a 7x7 kernel (48
    taps) the peak allocation stays a small multiple of the unary's size, far below one array
    per tap, when recomputing; the cache adds exactly one array per tap when it fits."""
    rng = np.random.default_rng(5)
    unary = rng.normal(size=(2, 96, 96)).astype(np.float32)
    image = rng.random((96, 96, 3)).astype(np.float32)
    terms = [PairwiseTerm(kernel_size=7, dilation=1)]
    pac_crf(unary, image, pairwise=terms, num_steps=1)  # compile outside the measurement
    scratch_arrays.release()  # the weight cache is kept from call to call: allocate it again
    tracemalloc.start()
    pac_crf(unary, image, pairwise=terms, num_steps=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    per_tap_array = 48 * 96 * 96 * 4
    if path == "cpu_kernels":  # 48 taps > 2 x 2 labels, but under 256 MiB: cached
        assert per_tap_array < peak < 16 * unary.nbytes + per_tap_array, (peak, unary.nbytes)
    else:
        assert peak < 16 * unary.nbytes < per_tap_array, (peak, unary.nbytes)


def test_weight_cache_budget(monkeypatch):
    """The weights are cached when they fit in CRF_WEIGHT_CACHE_BYTES or in twice the unary's
    size, whichever is larger; the cached and recomputed steps agree, and reruns are
    bit-identical."""
    rng = np.random.default_rng(4)
    image = rng.random((10, 12, 3))
    terms = [PairwiseTerm(kernel_size=3, dilation=1), PairwiseTerm(kernel_size=3, dilation=4)]
    made = []
    original = cpu.crf_prepare

    def spy(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(cpu, "crf_prepare", spy)
    monkeypatch.setattr(cpu, "CRF_WEIGHT_CACHE_BYTES", 0)
    results = {}
    for labels in (8, 9, 7):  # 16 taps: at most 2 x 8 labels' worth
        unary = rng.normal(0.0, 1.0, (labels, 10, 12))
        results[labels] = pac_crf(unary, image, pairwise=terms, num_steps=2)
        np.testing.assert_array_equal(pac_crf(unary, image, pairwise=terms, num_steps=2),
                                      results[labels])
        expected, _ = oracle_crf(unary, image.transpose(2, 0, 1), terms, 2)
        np.testing.assert_allclose(results[labels], expected, rtol=0, atol=1e-10)
    assert [isinstance(m, cpu.CRFWeights) for m in made] == [True] * 4 + [False] * 2
    monkeypatch.setattr(cpu, "CRF_WEIGHT_CACHE_BYTES", 16 * 10 * 12 * 8)
    pac_crf(unary, image, pairwise=terms, num_steps=2)
    assert isinstance(made[-1], cpu.CRFWeights) and made[-1].cache.nbytes == 16 * 10 * 12 * 8


def test_paths_run_the_backend_entry_points(monkeypatch):
    """The CPU path runs the CPU backend's CRF entry points, the generic path (what CuPy arrays
    take) those of pacarray._generic: the ``path`` fixture tests what it claims to."""
    import pacarray._cpu as cpu
    import pacarray._generic as generic

    calls = []
    for module in (cpu, generic):
        for name in ("crf_step", "crf_softmax", "crf_add_messages", "crf_add_adjoint"):
            def spy(*args, _original=getattr(module, name), _module=module):
                calls.append(_module)
                return _original(*args)

            monkeypatch.setattr(module, name, spy)
    rng = np.random.default_rng(2)
    unary, image = rng.normal(size=(3, 6, 7)), rng.random((6, 7, 3))
    terms = [PairwiseTerm(kernel_size=3), PairwiseTerm(kernel_size=3, blur=2)]
    pac_crf_vjp(unary, unary, image, pairwise=terms, num_steps=1, compatibility=np.eye(3))
    assert calls and set(calls) == {cpu}
    calls.clear()
    with _dispatch.generic_kernels():
        pac_crf_vjp(unary, unary, image, pairwise=terms, num_steps=1, compatibility=np.eye(3))
    assert calls and set(calls) == {generic}


# --------------------------------------------------------------------------------------------
# Gradients


def _crf_function(image, terms, **options):
    """pac_crf as a function of the arrays the gradient checker perturbs."""
    def function(unary, weights, unary_weight, compatibility=None):
        chosen = [PairwiseTerm(**{**vars(t), "weight": w}) for t, w in zip(terms, weights)]
        compat = "potts" if compatibility is None else compatibility
        return pac_crf(unary, image, pairwise=chosen, unary_weight=unary_weight,
                       compatibility=compat, **options)

    def vjp(grad_output, unary, weights, unary_weight, compatibility=None):
        chosen = [PairwiseTerm(**{**vars(t), "weight": w}) for t, w in zip(terms, weights)]
        compat = "potts" if compatibility is None else compatibility
        grads = pac_crf_vjp(grad_output, unary, image, pairwise=chosen,
                            unary_weight=unary_weight, compatibility=compat, **options)
        return {"unary": grads.unary, "weights": np.asarray(grads.weights),
                "unary_weight": grads.unary_weight, "compatibility": grads.compatibility}

    return function, vjp


GRADIENT_CASES = {
    "potts": ([PairwiseTerm(weight=0.8, kernel_size=3, sigma_spatial=2.0, sigma_color=0.3),
               PairwiseTerm(weight=0.4, kernel_size=(3, 5), dilation=(1, 2), sigma_spatial=None,
                            features="smoothness")], False, {}),
    "matrix+log": ([PairwiseTerm(weight=0.6, kernel_size=5, sigma_spatial=2.0,
                                 sigma_color=0.4)], True, {"output": "log"}),
    "blur+probabilities": ([PairwiseTerm(weight=0.5, kernel_size=3, sigma_spatial=3.0,
                                         sigma_color=0.5, blur=2)], False,
                           {"input": "probabilities", "num_steps": 2}),
}


@pytest.mark.parametrize("case", [
    "potts",
    # Each a finite-difference check over every input on both paths: the slow tier.
    pytest.param("matrix+log", marks=pytest.mark.slow),
    pytest.param("blur+probabilities", marks=pytest.mark.slow),
])
def test_gradients_match_finite_differences(path, case):
    terms, use_matrix, options = GRADIENT_CASES[case]
    rng = np.random.default_rng(11)
    labels, height, width = 3, 7, 9
    image = rng.random((height, width, 3))
    if options.get("input") == "probabilities":
        unary = rng.dirichlet(np.ones(labels), size=(height, width)).transpose(2, 0, 1)
        unary = 0.05 + 0.9 * unary  # away from the clipping floor and from 1
    else:
        unary = rng.normal(0.0, 1.0, (labels, height, width))
    inputs = {"unary": unary, "weights": np.array([t.weight for t in terms]),
              "unary_weight": 0.9}
    if use_matrix:
        inputs["compatibility"] = rng.normal(0.0, 1.0, (labels, labels))
    function, vjp = _crf_function(image, terms, num_steps=options.pop("num_steps", 3),
                                  **options)
    report = check_gradients(function, vjp, inputs, tolerance=1e-6)
    assert report.passed, str(report)
    assert set(report.errors) == set(inputs)


def test_gradient_of_a_cross_entropy_fit_lowers_the_loss():
    """A gradient step on the pairwise weight and the unary weight reduces a real loss."""
    rng = np.random.default_rng(3)
    truth = np.zeros((16, 16), int)
    truth[:, 8:] = 1
    image = np.repeat(truth[..., None], 3, axis=-1).astype(float)
    unary = np.stack([truth == 0, truth == 1]).astype(float) * 0.5 + rng.normal(0, 1, (2, 16, 16))
    target = np.eye(2)[truth].transpose(2, 0, 1)

    def loss_and_grads(weight, unary_weight):
        terms = [PairwiseTerm(weight=weight, kernel_size=5, dilation=1, sigma_color=0.2)]
        log_q = pac_crf(unary, image, pairwise=terms, unary_weight=unary_weight, output="log")
        grads = pac_crf_vjp(-target, unary, image, pairwise=terms, unary_weight=unary_weight,
                            output="log")
        return -float(np.sum(target * log_q)), grads

    loss, grads = loss_and_grads(0.1, 1.0)
    assert grads.compatibility is None and grads.unary.shape == unary.shape
    assert grads.weights[0] < 0  # more smoothing along the edges helps here
    new_loss, _ = loss_and_grads(0.1 - 1e-3 * grads.weights[0], 1.0 - 1e-3 * grads.unary_weight)
    assert new_loss < loss


def test_vjp_layout_and_errors(rng):
    unary = rng.normal(size=(2, 6, 7, 3))  # (N, H, W, L)
    image = rng.random((2, 6, 7, 3))
    grad = rng.normal(size=unary.shape)
    channels_last = pac_crf_vjp(grad, unary, image, label_axis=-1)
    planar = pac_crf_vjp(np.moveaxis(grad, -1, 1), np.moveaxis(unary, -1, 1), image)
    np.testing.assert_allclose(channels_last.unary, np.moveaxis(planar.unary, 1, -1),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(channels_last.weights, planar.weights, rtol=1e-10)
    with pytest.raises(ValueError, match="grad_output must have the output's shape"):
        pac_crf_vjp(grad[:, :5], unary, image, label_axis=-1)
    with pytest.raises(ValueError, match="labels are piecewise constant"):
        pac_crf_vjp(grad, unary, image, label_axis=-1, output="labels")


# --------------------------------------------------------------------------------------------
# Refinement quality on a real photograph


def _photograph():
    try:
        from pacarray.data import sample_image
    except ImportError:
        from skimage.data import astronaut as sample_image
    image = np.asarray(sample_image(), dtype=np.float64) / 255.0
    # 512 -> 256 by 2x2 means: keeps the test fast.
    return image.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))


def _reference_labels(image, classes, seed):
    """k-means on colour, then cleaned: two 3x3 majority votes and no piece smaller than
    0.5 % of the image (small pieces take the label of the nearest large piece)."""
    from scipy.cluster.vq import kmeans2

    _, labels = kmeans2(image.reshape(-1, 3), classes, seed=np.random.default_rng(seed),
                        minit="++")
    labels = labels.reshape(image.shape[:2])
    for _ in range(2):
        votes = ndi.uniform_filter(np.eye(classes)[labels].transpose(2, 0, 1), size=(1, 3, 3),
                                   mode="nearest")
        labels = votes.argmax(axis=0)
    small = np.zeros(labels.shape, bool)
    for label in range(classes):
        pieces, count = ndi.label(labels == label)
        sizes = np.bincount(pieces.ravel(), minlength=count + 1)
        sizes[0] = labels.size
        small |= sizes[pieces] < 0.005 * labels.size
    _, (iy, ix) = ndi.distance_transform_edt(small, return_indices=True)
    return labels[iy, ix]


def _degraded_unary(labels, classes, seed, factor=8, blur=1.0, noise=0.3):
    """Log-probabilities: one-hot labels averaged over factor x factor blocks, blurred, with
    Gaussian noise, renormalized and upsampled bilinearly."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(classes)[labels].transpose(2, 0, 1)
    height, width = labels.shape
    low = onehot.reshape(classes, height // factor, factor, width // factor, factor)
    low = ndi.gaussian_filter(low.mean(axis=(2, 4)), (0, blur, blur), mode="nearest")
    low = np.clip(low + rng.normal(0.0, noise, low.shape), 1e-3, None)
    low /= low.sum(axis=0)
    up = ndi.zoom(low, (1, factor, factor), order=1, mode="nearest", grid_mode=True)
    up = np.clip(up, 1e-3, None)
    return np.log(up / up.sum(axis=0))


def _mean_iou(predicted, reference, classes):
    scores = []
    for label in range(classes):
        union = np.sum((predicted == label) | (reference == label))
        if union:
            scores.append(np.sum((predicted == label) & (reference == label)) / union)
    return 100.0 * float(np.mean(scores))


@pytest.mark.parametrize("classes", [4, 5])
def test_refines_a_degraded_segmentation_of_a_photograph(classes):
    image = _photograph()
    reference = _reference_labels(image, classes, seed=0)
    unary = _degraded_unary(reference, classes, seed=1).astype(np.float32)
    before = _mean_iou(unary.argmax(axis=0), reference, classes)
    image8 = np.round(image * 255).astype(np.uint8)
    refined = pac_crf(unary, image8, output="labels")  # defaults, uint8 image
    after = _mean_iou(refined, reference, classes)
    print(f"\nPAC-CRF on the sample photograph (256x256, {classes} k-means classes): "
          f"mean IoU {before:.1f} -> {after:.1f} ({after - before:+.1f} points)")
    assert after >= before + 5.0, (before, after)
    # The float image on [0, 1] is the same input as the uint8 one.
    refined_float = pac_crf(unary, (image8 / 255).astype(np.float32), output="labels")
    assert np.mean(refined_float == refined) > 0.999


# --------------------------------------------------------------------------------------------
# Errors


def _good():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 8, 9)), rng.random((8, 9, 3))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda u, i: (u, i[:7]), ValueError, "image spatial shape"),
        (lambda u, i: (u[:, :, :8], i), ValueError, "image spatial shape"),
        (lambda u, i: (np.where(np.arange(9) == 4, np.nan, u), i), ValueError, "unary must be fin"),
        (lambda u, i: (np.where(np.arange(9) == 4, np.inf, u), i), ValueError, "unary must be fin"),
        (lambda u, i: (u, np.where(np.arange(9)[:, None] == 2, np.nan, i)), ValueError,
         "image must be finite"),
        (lambda u, i: (u[:1], i), ValueError, "at least 2 labels"),
        (lambda u, i: (u[0], i), ValueError, "unary must be"),
        (lambda u, i: (u + 1j, i), TypeError, "unary must be real"),
        (lambda u, i: (u, i[..., 0]), ValueError, "image must be"),
    ],
)
def test_bad_arrays(change, error, match):
    unary, image = change(*_good())
    with pytest.raises(error, match=match):
        pac_crf(unary, image)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"compatibility": np.ones((2, 2))}, ValueError, r"compatibility must have shape \(L, L\)"),
        ({"compatibility": np.ones((3, 3, 1))}, ValueError, "compatibility must have shape"),
        ({"compatibility": "ising"}, ValueError, "compatibility must be 'potts'"),
        ({"compatibility": np.full((3, 3), np.nan)}, ValueError, "compatibility must be finite"),
        ({"num_steps": -1}, ValueError, "num_steps must be >= 0"),
        ({"num_steps": 2.5}, TypeError, "num_steps must be an int"),
        ({"unary_weight": -1.0}, ValueError, "unary_weight must be >= 0"),
        ({"unary_weight": np.nan}, ValueError, "unary_weight must be finite"),
        ({"input": "scores"}, ValueError, "input must be"),
        ({"output": "argmax"}, ValueError, "output must be"),
        ({"label_axis": 3}, ValueError, "label_axis"),
        ({"channel_axis": 5}, ValueError, "channel_axis"),
        ({"pairwise": "appearance"}, TypeError, "pairwise must be a PairwiseTerm"),
        ({"pairwise": [PairwiseTerm(features=np.ones((1, 4, 4)))]}, ValueError,
         r"pairwise\[0\]\.features must have shape"),
    ],
)
def test_bad_options(kwargs, error, match):
    unary, image = _good()
    with pytest.raises(error, match=match):
        pac_crf(unary, image, **kwargs)


def test_bad_probabilities_and_missing_image():
    unary, image = _good()
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        pac_crf(unary, image, input="probabilities")
    with pytest.raises(ValueError, match="needs the image"):
        pac_crf(unary, None)
    with pytest.raises(ValueError, match="batch axis"):
        pac_crf(unary[None], image[None], label_axis=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": -0.5}, "weight must be >= 0"),
        ({"weight": np.inf}, "weight must be finite"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"kernel_size": 1}, "larger than 1"),
        ({"dilation": 0}, "dilation must be >= 1"),
        ({"sigma_spatial": 0.0}, "sigma_spatial must be > 0"),
        ({"sigma_color": -0.1}, "sigma_color must be > 0"),
        ({"features": "colour"}, "features must be 'appearance', 'smoothness' or an array"),
        ({"features": np.ones((4, 4))}, r"features array must have shape \(F, H, W\)"),
        ({"blur": 0}, "blur must be an integer >= 1"),
        ({"blur": 1.5}, "blur must be an integer >= 1"),
    ],
)
def test_bad_pairwise_terms(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairwiseTerm(**kwargs)


def test_default_pairwise_is_the_documented_terms():
    """DEFAULT_PAIRWISE: a flat 3x3 appearance window (weight 4, sigma_color 0.05) and a
    palette term (weight 8, sigma_spatial 160, sigma_color 0.05, 16 colours, 32-pixel cells);
    FAST_PAIRWISE: 1x3 and 3x1 windows (weight 4 each) and the same palette term."""
    def window(term):
        assert type(term) is PairwiseTerm
        return (term.weight, term.kernel_size, term.dilation, term.sigma_spatial,
                term.sigma_color, term.features, term.blur)

    def palette(term):
        assert type(term) is PaletteTerm
        return (term.weight, term.sigma_spatial, term.sigma_color, term.colors, term.grid_cell,
                term.features, term.palette)

    assert len(DEFAULT_PAIRWISE) == 2 and len(FAST_PAIRWISE) == 3
    assert window(DEFAULT_PAIRWISE[0]) == (4.0, 3, 1, None, 0.05, "appearance", 1)
    assert [window(t) for t in FAST_PAIRWISE[:2]] == [
        (4.0, size, 1, None, 0.05, "appearance", 1) for size in ((1, 3), (3, 1))]
    for terms in (DEFAULT_PAIRWISE, FAST_PAIRWISE):
        assert palette(terms[-1]) == (8.0, 160.0, 0.05, 16, 32, "appearance", None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_finiteness_check_finds_each_kind_of_non_finite_value(dtype):
    """The CPU backend's ``all_finite`` (the unary's check) reads the exponent bits in blocks
    of 65536 values: a NaN or an infinity in any block, the last partial one included, is
    found; the largest finite values and subnormals are not flagged."""
    from pacarray._cpu import all_finite

    values = np.zeros((3, 257, 301), dtype)  # 232071 values: four blocks, the last partial
    assert all_finite(values)
    info = np.finfo(dtype)
    for value, finite in ((np.nan, False), (np.inf, False), (-np.inf, False),
                          (info.max, True), (-info.max, True), (info.tiny / 4, True)):
        for where in ((0, 0, 0), (1, 100, 7), (2, 256, 300)):
            changed = values.copy()
            changed[where] = value
            assert all_finite(changed) is finite, (value, where)
