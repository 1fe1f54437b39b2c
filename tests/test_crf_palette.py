"""PAC-CRF's palette term (:class:`pacarray.PaletteTerm`): against the float64 oracle of
``reference.oracle_palette_message`` on images, volumes and signals, through the fused CPU step,
the unfused CPU path and the generic path; gradients against finite differences; the palette;
bad input; the CUDA backend's host side on the NumPy-backed CuPy stand-in."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

import pacarray._cpu as cpu
import pacarray._generic as generic
import pacarray._mean_field as mean_field
from pacarray import _dispatch, _palette
from pacarray.crf import (
    DEFAULT_PAIRWISE,
    PairwiseTerm,
    PaletteTerm,
    pac_crf,
    pac_crf_vjp,
)
from pacarray._cpu import _crf_vector
from pacarray.testing import check_gradients

from test_crf import oracle_crf, oracle_softmax

# --------------------------------------------------------------------------------------------
# The three CPU-side paths

#: The CPU backend's palette entry points (Numba kernels and the fused step).
PALETTE_ENTRY_POINTS = ("crf_palette_step", "crf_palette_start", "crf_palette_splat",
                        "crf_palette_slice_add", "crf_palette_assign")


_generic_over = generic.over


def _without_palette_kernels(module):
    """``pacarray._generic.over(module)`` less the backend's palette entry points, so that the
    palette term runs on the generic code of ``pacarray._palette`` as on the CUDA backend
    (``over`` keeps every name it does not replace; see
    ``test_generic_kernels_route_the_palette_term_to_the_generic_code``)."""
    view = _generic_over(module)
    for name in PALETTE_ENTRY_POINTS + ("crf_palette_fusable",):
        if hasattr(view, name):
            delattr(view, name)
    return view


@pytest.fixture(params=["fused", "unfused", "generic"])
def palette_path(request, monkeypatch):
    """Each test through the CPU backend's fused step (one palette term and cached window
    kernels), the CPU backend without it (Numba splat and slice, the step on ``extra``) and
    the generic path (``_dispatch.generic_kernels``, with the palette term's generic splat,
    smoothing and slice). Yields the path's name and the lists of the fused steps it ran and
    of the passes of the block kernel (``mean_field_step_fused``) among them."""
    fused, blocks = [], []
    original = cpu.crf_palette_step
    original_blocks = cpu._fused_pass

    def spy(*args, **kwargs):
        fused.append(args[0].shape)
        return original(*args, **kwargs)

    def spy_blocks(*args, **kwargs):
        blocks.append(args[0].shape)
        return original_blocks(*args, **kwargs)

    monkeypatch.setattr(cpu, "crf_palette_step", spy)
    monkeypatch.setattr(cpu, "_fused_pass", spy_blocks)
    state = types.SimpleNamespace(name=request.param, fused=fused, blocks=blocks)
    if request.param == "unfused":
        monkeypatch.setattr(mean_field, "_fused_palette", lambda field, step_terms: None)
    if request.param == "generic":
        monkeypatch.setattr(generic, "over", _without_palette_kernels)
        with _dispatch.generic_kernels():
            yield state
        return
    yield state


def _blocks_apply(shape, dtype, terms, options):
    """Whether the fused step runs on the block kernel (``docs/design.md`` §4): Potts
    without logits, one palette term of at most 16 colours whose cells, like the rows, are
    at least a vector block wide (:func:`pacarray._cpu._crf_vector.lanes`), and window terms
    of at most 8 taps."""
    palettes = [t for t in terms if isinstance(t, PaletteTerm)]
    windows = [t for t in terms if not isinstance(t, PaletteTerm)]
    taps = sum(int(np.prod(np.broadcast_to(t.kernel_size, (2,)))) - 1 for t in windows)
    lanes = _crf_vector.lanes(np.dtype(dtype).itemsize)
    return (len(palettes) == 1 and palettes[0].colors <= 16 and palettes[0].palette is None
            and palettes[0].grid_cell >= lanes and shape[1] >= lanes and taps <= 8
            and "compatibility" not in options and options.get("output") != "log")


def _check_path(path, expect_fused, expect_blocks=None):
    """The fused step ran exactly where it should, on the block kernel where expected (not
    checked when None)."""
    if path.name == "fused" and expect_fused:
        assert path.fused, "the fused palette step did not run"
        if expect_blocks is not None:
            assert bool(path.blocks) == expect_blocks, path.blocks
    else:
        assert not path.fused, f"the fused palette step ran on the {path.name} path"
        assert not path.blocks, f"the block kernel ran on the {path.name} path"


# --------------------------------------------------------------------------------------------
# Against the oracle


def _log_softmax(logits):
    shifted = logits - logits.max(axis=0)
    return shifted - np.log(np.exp(shifted).sum(axis=0))


def _for_image(terms, n):
    """The terms as the oracle takes them for image ``n`` of a batch (per-image features and
    palettes of shape (N, ...) reduced to image n's)."""
    chosen = []
    for term in terms:
        changes = {}
        if not isinstance(term.features, str) and np.ndim(term.features) == 4:
            changes["features"] = term.features[n]
        if isinstance(term, PaletteTerm) and np.ndim(term.palette) == 3:
            changes["palette"] = term.palette[n]
        chosen.append(dataclasses.replace(term, **changes))
    return chosen


def _oracle(unary, image, terms, num_steps, compatibility=None, log=False):
    """The float64 oracle of a batched (N, L, H, W) unary and (N, C, H, W) image (or None):
    image by image."""
    results = []
    for n in range(unary.shape[0]):
        q, logits = oracle_crf(unary[n], None if image is None else image[n],
                               _for_image(terms, n), num_steps, compatibility)
        results.append(_log_softmax(logits) if log else q)
    return np.stack(results)


def _two_colours(image):
    """The image quantized to two colours (a palette of 2 entries whatever ``colors``)."""
    dark = image.mean(axis=-1, keepdims=True) < 0.5
    return np.where(dark, np.array([0.1, 0.2, 0.3]), np.array([0.8, 0.7, 0.9]))


def _case(name, dtype):
    """``(unary (N, L, H, W), image (N, H, W, C) or None, terms, options, expect_fused)``
    of the dtype, drawn from a seed of its own (the same data on every path)."""
    seed = sum(map(ord, name))
    rng = np.random.default_rng(seed)
    shape = {"cell3": (13, 17), "cell5+window+matrix": (24, 31), "batch+labels_last": (13, 17),
             "palette+window": (15, 14), "features+log": (13, 17),
             "two_palettes": (16, 19), "many_taps+20_colours": (14, 45),
             "two_taps+16_colours+log": (17, 57), "blocks:3x3+16_colours": (37, 53),
             "blocks:far_taps": (23, 41), "blocks:palette_only": (30, 70),
             "blocks:cross": (21, 35)}[name]
    labels = {"cell5+window+matrix": 4, "blocks:3x3+16_colours": 6}.get(name, 3)
    batch = 2 if name in ("batch+labels_last", "blocks:palette_only") else 1
    unary = rng.normal(0.0, 1.5, (batch, labels, *shape))
    image = rng.random((batch, *shape, 3))
    options = {}
    window = PairwiseTerm(weight=1.0, kernel_size=3, dilation=1, sigma_spatial=2.0,
                          sigma_color=0.3)
    if name == "cell3":  # send 1; 3 sigma = 12 pixels = 4 cells < the 6 cells across
        terms = [PaletteTerm(weight=2.5, sigma_spatial=4.0, sigma_color=0.3, colors=5, cell=3)]
    elif name == "cell5+window+matrix":  # send 2; the reach, 18 pixels, is 3 of 7 cells
        terms = [window,
                 PaletteTerm(weight=3.0, sigma_spatial=6.0, sigma_color=0.25, colors=6, cell=5)]
        options["compatibility"] = rng.normal(0.0, 1.0, (labels, labels))
    elif name == "batch+labels_last":  # send 2, two images (the second with two colours)
        image[1] = _two_colours(image[1])
        terms = [PaletteTerm(weight=2.0, sigma_spatial=5.0, sigma_color=0.3, colors=5, cell=4)]
        options["label_axis"] = -1
    elif name == "palette+window":  # an explicit palette (intensities), send 1
        palette = np.array([[0.2, 0.2, 0.2], [0.8, 0.3, 0.5], [0.4, 0.9, 0.1],
                            [0.7, 0.7, 0.8]]).astype(dtype)
        terms = [window, PaletteTerm(weight=2.0, sigma_spatial=3.0, sigma_color=0.35,
                                     palette=palette, cell=2)]
    elif name == "features+log":  # a features array, no image, log output, send 2
        features = (2.0 * rng.random((2, *shape))).astype(dtype)
        terms = [PaletteTerm(weight=2.5, sigma_spatial=5.0, colors=4, cell=4,
                             features=features)]
        image = None
        options["output"] = "log"
    elif name == "many_taps+20_colours":
        # 24 + 2 window taps (vector blocks of 8, 8, 8 and 2 taps, then single columns, in the
        # fused step) and a palette too large for its permute lookup (the scalar slice)
        terms = [PairwiseTerm(weight=0.3, kernel_size=5, dilation=2, sigma_spatial=3.0,
                              sigma_color=0.4),
                 PairwiseTerm(weight=0.7, kernel_size=(1, 3), dilation=1, sigma_spatial=None,
                              sigma_color=0.3),
                 PaletteTerm(weight=2.0, sigma_spatial=8.0, sigma_color=0.2, colors=20,
                             cell=3)]
    elif name == "two_taps+16_colours+log":
        # the row kernel (the log output needs its logits): a 2-tap window (one vector block
        # of 2 taps, and an overlapping last block) and 16 palette entries, the most the
        # permute lookup takes; 16-pixel cells, so that blocks of pixels between the same two
        # coarse columns (the permute) and blocks that straddle a column (one pixel at a time)
        # both occur in each dtype
        terms = [PairwiseTerm(weight=0.9, kernel_size=(3, 1), dilation=3, sigma_spatial=None,
                              sigma_color=0.3),
                 PaletteTerm(weight=2.5, sigma_spatial=20.0, sigma_color=0.15, colors=16,
                             cell=16)]
        options["output"] = "log"
    elif name == "blocks:3x3+16_colours":
        # the block kernel with the default's shape of terms: 8 taps (the square read from
        # one pointer on the inner rows; 5 on the first and last rows, padded with taps of
        # weight 0), 16 colours, cells of 16 pixels (blocks of 16
        # float32 straddle a coarse column, blocks of 8 float64 do not), an overlapping last
        # block (53 columns)
        terms = [PairwiseTerm(weight=1.5, kernel_size=3, dilation=1, sigma_spatial=None,
                              sigma_color=0.2),
                 PaletteTerm(weight=3.0, sigma_spatial=30.0, sigma_color=0.15, colors=16,
                             cell=16)]
    elif name == "blocks:far_taps":
        # the block kernel with 4 taps reaching 20 columns out (two vector blocks of padding
        # around each row) and 2 rows down, 7 colours, 18-pixel cells
        terms = [PairwiseTerm(weight=0.8, kernel_size=(1, 3), dilation=20, sigma_spatial=None,
                              sigma_color=0.3),
                 PairwiseTerm(weight=1.1, kernel_size=(3, 1), dilation=2, sigma_spatial=None,
                              sigma_color=0.3),
                 PaletteTerm(weight=2.0, sigma_spatial=15.0, sigma_color=0.2, colors=7,
                             cell=18)]
    elif name == "blocks:cross":
        # the block kernel with FAST_PAIRWISE's shape: a 1x3 and a 3x1 window at dilation 1
        # (the "+" read from one pointer on the inner rows), 9 colours, 16-pixel cells
        terms = [PairwiseTerm(weight=1.2, kernel_size=(1, 3), dilation=1, sigma_spatial=None,
                              sigma_color=0.25),
                 PairwiseTerm(weight=0.7, kernel_size=(3, 1), dilation=1, sigma_spatial=None,
                              sigma_color=0.25),
                 PaletteTerm(weight=2.0, sigma_spatial=20.0, sigma_color=0.2, colors=9,
                             cell=16)]
    elif name == "blocks:palette_only":
        # the block kernel without window terms, two images, 5 colours, 20-pixel cells
        terms = [PaletteTerm(weight=2.5, sigma_spatial=25.0, sigma_color=0.2, colors=5,
                             cell=20)]
    else:  # two palette terms: not fused; the second reaches one cell (> 3 sigma)
        features = (1.5 * rng.random((1, 2, *shape))).astype(dtype)
        terms = [PaletteTerm(weight=1.5, sigma_spatial=4.0, sigma_color=0.3, colors=4, cell=3),
                 PaletteTerm(weight=2.0, sigma_spatial=1.2, colors=3, cell=4,
                             features=features)]
    unary = unary.astype(dtype)
    if image is not None:
        image = image.astype(dtype)
    return unary, image, terms, options, name != "two_palettes"


CASES = ["cell3", "cell5+window+matrix", "batch+labels_last", "palette+window",
         "features+log", "two_palettes", "many_taps+20_colours", "two_taps+16_colours+log",
         "blocks:3x3+16_colours", "blocks:far_taps", "blocks:palette_only", "blocks:cross"]
_ORACLE = {}


def _expected(name, dtype):
    """The oracle's result for a case (computed once per case and dtype)."""
    key = (name, np.dtype(dtype))
    if key not in _ORACLE:
        unary, image, terms, options, _ = _case(name, dtype)
        _ORACLE[key] = _oracle(unary, None if image is None else image.transpose(0, 3, 1, 2),
                               terms, 2, options.get("compatibility"),
                               log=options.get("output") == "log")
    return _ORACLE[key]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_matches_the_oracle(palette_path, case, dtype, assert_close):
    unary, image, terms, options, expect_fused = _case(case, dtype)
    labels_last = options.get("label_axis") == -1
    if labels_last:
        unary = np.moveaxis(unary, 1, -1)
    result = pac_crf(unary, image, num_steps=2, pairwise=terms, **options)
    blocks = _blocks_apply(unary.shape[-2:] if not labels_last else unary.shape[-3:-1],
                           dtype, terms, options)
    assert blocks or not case.startswith("blocks:")
    _check_path(palette_path, expect_fused, blocks)
    if labels_last:
        result = np.moveaxis(result, -1, 1)
    assert_close(result, _expected(case, dtype), dtype)


def test_the_oracle_passes_a_constant_through():
    """The palette message is a weighted mean (normalized): a constant Q passes through."""
    from reference import oracle_palette_message

    rng = np.random.default_rng(1)
    q = np.full((2, 7, 9), 0.5)
    features = rng.random((3, 7, 9)) * 4
    palette = features.reshape(3, -1).T[:5]
    for cell in (1, 3, 4):
        np.testing.assert_allclose(oracle_palette_message(q, features, palette, 2.0, cell), q,
                                   rtol=1e-12)


def _spy_on_palette_kernels(monkeypatch):
    """The names of the CPU backend's palette entry points called from now on."""
    calls = []
    for name in PALETTE_ENTRY_POINTS:
        def spy(*args, _original=getattr(cpu, name), _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cpu, name, spy)
    return calls


def test_the_paths_run_what_they_claim(palette_path, monkeypatch):
    """The fused path runs the fused step, the unfused one the Numba splat and slice without
    it, the generic one no CPU palette kernel."""
    calls = _spy_on_palette_kernels(monkeypatch)
    rng = np.random.default_rng(4)
    pac_crf(rng.normal(size=(3, 9, 10)), rng.random((9, 10, 3)), num_steps=2)
    if palette_path.name == "generic":
        assert calls == []
    elif palette_path.name == "unfused":
        assert "crf_palette_step" not in calls and "crf_palette_splat" in calls
    else:
        assert "crf_palette_step" in calls


def test_generic_kernels_route_the_palette_term_to_the_generic_code(monkeypatch):
    calls = _spy_on_palette_kernels(monkeypatch)
    rng = np.random.default_rng(4)
    with _dispatch.generic_kernels():
        pac_crf(rng.normal(size=(3, 9, 10)), rng.random((9, 10, 3)), num_steps=2)
    assert calls == []


# --------------------------------------------------------------------------------------------
# Gradients


def _with_weights(terms, weights):
    return [dataclasses.replace(t, weight=float(w)) for t, w in zip(terms, weights)]


@pytest.mark.parametrize("matrix", [False, True], ids=["potts+log", "matrix"])
def test_gradients_match_finite_differences(palette_path, matrix):
    rng = np.random.default_rng(12)
    labels, height, width = 3, 9, 11
    image = rng.random((height, width, 3))
    terms = [PairwiseTerm(weight=0.8, kernel_size=3, dilation=1, sigma_spatial=2.0,
                          sigma_color=0.3),
             PaletteTerm(weight=1.7, sigma_spatial=4.0, sigma_color=0.3, colors=4,
                         cell=4 if matrix else 3)]
    options = {"num_steps": 2, "output": "probabilities" if matrix else "log"}

    def function(unary, weights, compatibility=None):
        return pac_crf(unary, image, pairwise=_with_weights(terms, weights),
                       compatibility="potts" if compatibility is None else compatibility,
                       **options)

    def vjp(grad_output, unary, weights, compatibility=None):
        grads = pac_crf_vjp(grad_output, unary, image, pairwise=_with_weights(terms, weights),
                            compatibility="potts" if compatibility is None else compatibility,
                            **options)
        return {"unary": grads.unary, "weights": np.asarray(grads.weights),
                "compatibility": grads.compatibility}

    inputs = {"unary": rng.normal(0.0, 1.0, (labels, height, width)),
              "weights": np.array([t.weight for t in terms])}
    if matrix:
        inputs["compatibility"] = rng.normal(0.0, 1.0, (labels, labels))
    report = check_gradients(function, vjp, inputs, tolerance=1e-6)
    assert report.passed, str(report)
    assert set(report.errors) == set(inputs)
    # Each weight on its own: a central difference of <v, pac_crf>.
    grad_output = rng.normal(size=(labels, height, width))
    analytic = vjp(grad_output, **inputs)["weights"]
    step = 1e-4
    for index in range(len(terms)):
        shift = np.zeros(len(terms))
        shift[index] = step
        plus = np.sum(grad_output * function(inputs["unary"], inputs["weights"] + shift,
                                             inputs.get("compatibility")))
        minus = np.sum(grad_output * function(inputs["unary"], inputs["weights"] - shift,
                                              inputs.get("compatibility")))
        numeric = (plus - minus) / (2 * step)
        assert abs(numeric - analytic[index]) <= 1e-6 * max(1.0, abs(numeric)), (
            index, numeric, analytic[index])
    _check_path(palette_path, True)


# --------------------------------------------------------------------------------------------
# Volumes and signals (the generic N-D code)


@pytest.mark.parametrize(("cell", "sigma"), [(2, 1.0), (4, 3.0)], ids=["send1", "send2"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_volume_matches_the_nd_oracle(cell, sigma, dtype, assert_close):
    """(3, 5, 6, 7) volumes: with 2-voxel cells (3 x 3 x 4) the Gaussian is cut beyond the
    next cell; with 4-voxel cells every other voxel sends."""
    rng = np.random.default_rng(cell)
    unary = rng.normal(0.0, 1.5, (3, 5, 6, 7)).astype(dtype)
    volume = rng.random((5, 6, 7, 2)).astype(dtype)
    compat = rng.normal(0.0, 1.0, (3, 3))
    terms = [PaletteTerm(weight=2.5, sigma_spatial=sigma, sigma_color=0.3, colors=5, cell=cell)]
    expected, _ = oracle_crf(unary, np.moveaxis(volume, -1, 0), terms, 2, compat)
    got = pac_crf(unary, volume, pairwise=terms, num_steps=2, compatibility=compat,
                  spatial_ndim=3)
    assert_close(got, expected, dtype)
    # Batched, labels last.
    batched = pac_crf(np.moveaxis(unary, 0, -1)[None], volume[None], pairwise=terms,
                      num_steps=2, compatibility=compat, spatial_ndim=3, label_axis=-1)
    assert_close(np.moveaxis(batched[0], -1, 0), expected, dtype)


@pytest.mark.parametrize(("cell", "sigma"), [(3, 0.9), (4, 3.0)], ids=["send1", "send2"])
def test_signal_matches_the_oracle(cell, sigma, assert_close):
    """Signals of 37 samples: 3-sample cells reach their neighbours only (the cell is more
    than 3 sigma); 4-sample cells 3 cells either side of 10."""
    rng = np.random.default_rng(10 + cell)
    unary = rng.normal(0.0, 1.5, (3, 37))
    signal = rng.random(37)
    terms = [PaletteTerm(weight=2.0, sigma_spatial=sigma, sigma_color=0.2, colors=4, cell=cell)]
    expected, logits = oracle_crf(unary, signal[None], terms, 2)
    got = pac_crf(unary, signal, pairwise=terms, num_steps=2, spatial_ndim=1, channel_axis=None)
    assert_close(got, expected, np.float64)
    log = pac_crf(unary, signal, pairwise=terms, num_steps=2, spatial_ndim=1,
                  channel_axis=None, output="log")
    assert_close(log, _log_softmax(logits), np.float64)


def test_long_signal_takes_its_palette_from_the_strided_sample(assert_close):
    """4201 samples: more than PALETTE_SAMPLE, so k-means runs on every other sample (the
    oracle takes the same subsample; the k-means of all samples differs)."""
    rng = np.random.default_rng(21)
    size = 4201
    assert _palette.sample_stride((size,)) == 2
    unary = rng.normal(0.0, 1.5, (2, size))
    signal = rng.random((size, 2))
    term = PaletteTerm(weight=2.0, sigma_spatial=6.0, sigma_color=0.3, colors=4, cell=4)
    sample = np.moveaxis(signal, -1, 0) / 0.3
    assert not np.allclose(_palette.palette_colors(sample, 4),
                           _palette.palette_colors(sample[:, ::2], 4))
    expected, _ = oracle_crf(unary, np.moveaxis(signal, -1, 0), [term], 1)
    got = pac_crf(unary, signal, pairwise=term, num_steps=1, spatial_ndim=1)
    assert_close(got, expected, np.float64)


def test_volume_of_depth_one_equals_the_image(rng):
    """The N-D generic code on a depth-1 volume equals the 2-D (fused CPU) result, and so do
    the gradients."""
    unary = rng.normal(size=(3, 11, 13))
    image = rng.random((11, 13, 3))
    terms = [PaletteTerm(weight=2.0, sigma_spatial=5.0, sigma_color=0.3, colors=5, cell=4)]
    flat = pac_crf(unary, image, pairwise=terms, num_steps=2)
    volume = pac_crf(unary[:, None], image[None], pairwise=terms, num_steps=2, spatial_ndim=3)
    np.testing.assert_allclose(volume[:, 0], flat, rtol=1e-10, atol=1e-12)
    grad = rng.normal(size=unary.shape)
    g2 = pac_crf_vjp(grad, unary, image, pairwise=terms, num_steps=2)
    g3 = pac_crf_vjp(grad[:, None], unary[:, None], image[None], pairwise=terms, num_steps=2,
                     spatial_ndim=3)
    np.testing.assert_allclose(g3.unary[:, 0], g2.unary, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g3.weights, g2.weights, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# The palette


def test_palette_colors_is_deterministic_and_at_most_colors(rng):
    sample = rng.random((3, 20, 30))
    first = _palette.palette_colors(sample, 6)
    assert first.shape == (6, 3) and first.dtype == np.float64
    np.testing.assert_array_equal(_palette.palette_colors(sample.copy(), 6), first)
    assert len(_palette.palette_colors(sample, 1)) == 1
    # Each entry is the mean of the points nearest to it (a fixed point of Lloyd's step, up
    # to the iterations' limit): within the sample's range.
    assert np.all(first >= sample.min()) and np.all(first <= sample.max())


def test_palette_of_two_colours_has_two_entries():
    sample = np.zeros((3, 8, 9))
    sample[:, :, 4:] = np.array([1.0, 2.0, 0.5])[:, None, None]
    palette = _palette.palette_colors(sample, 8)
    assert palette.shape == (2, 3)
    np.testing.assert_allclose(sorted(map(tuple, palette)), [(0.0, 0.0, 0.0), (1.0, 2.0, 0.5)])
    constant = _palette.palette_colors(np.full((1, 5, 5), 0.25), 16)
    np.testing.assert_array_equal(constant, [[0.25]])


def test_sample_stride_keeps_the_sample_small():
    for shape in ((13, 17), (64, 64), (65, 64), (300, 200), (17, 4000), (40, 50, 60), (10_000,)):
        stride = _palette.sample_stride(shape)
        kept = np.prod([-(-n // stride) for n in shape])
        assert kept <= _palette.PALETTE_SAMPLE, shape
        if stride > 1:  # the smallest such stride
            assert np.prod([-(-n // (stride - 1)) for n in shape]) > _palette.PALETTE_SAMPLE


@pytest.mark.parametrize("shape", [(9, 11), (1, 1)], ids=["constant", "1x1"])
def test_constant_and_single_pixel_images(palette_path, shape, assert_close):
    rng = np.random.default_rng(7)
    unary = rng.normal(0.0, 1.5, (3, *shape))
    image = np.full((*shape, 3), 0.4)
    for terms in (DEFAULT_PAIRWISE,
                  [PaletteTerm(weight=2.0, sigma_spatial=3.0, sigma_color=0.2, cell=3)]):
        expected, _ = oracle_crf(unary, image.transpose(2, 0, 1), terms, 2)
        got = pac_crf(unary, image, pairwise=terms, num_steps=2)
        assert np.all(np.isfinite(got))
        assert_close(got, expected, np.float64)
    if shape == (1, 1):  # one pixel: its message is its own marginals
        q = oracle_softmax(unary)
        for _ in range(2):
            q = oracle_softmax(unary + 2.0 * q)
        np.testing.assert_allclose(got, q, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": -1.0}, ValueError, "weight must be >= 0"),
        ({"weight": np.nan}, ValueError, "weight must be finite"),
        ({"sigma_spatial": 0.0}, ValueError, "sigma_spatial must be > 0"),
        ({"sigma_spatial": np.nan}, ValueError, "sigma_spatial must be finite"),
        ({"sigma_color": 0.0}, ValueError, "sigma_color must be > 0"),
        ({"sigma_color": "wide"}, TypeError, "sigma_color must be a real number"),
        ({"colors": 0}, ValueError, "colors must be an integer >= 1"),
        ({"colors": 2.5}, ValueError, "colors must be an integer >= 1"),
        ({"cell": 0}, ValueError, "cell must be an integer >= 1"),
        ({"features": "smoothness"}, ValueError, "features must be 'appearance' or an array"),
        ({"features": np.ones(4)}, ValueError, "features array must have shape"),
        ({"palette": np.ones(3)}, ValueError, "palette must have shape"),
    ],
)
def test_bad_palette_terms(kwargs, error, match):
    with pytest.raises(error, match=match):
        PaletteTerm(**kwargs)


def _good():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 8, 9)), rng.random((8, 9, 3))


@pytest.mark.parametrize(
    ("pairwise", "error", "match"),
    [
        (PaletteTerm(palette=np.ones((4, 2))), ValueError,
         r"pairwise\[0\]\.palette must have shape \(P, 3\)"),
        ([PairwiseTerm(), PaletteTerm(palette=np.ones((2, 4, 3)))], ValueError,
         r"pairwise\[1\]\.palette must have shape"),
        (PaletteTerm(palette=np.array([[0.1, 0.2, np.nan]])), ValueError,
         r"pairwise\[0\]\.palette must be finite"),
        (PaletteTerm(palette=np.array([[0.1, np.inf, 0.3]])), ValueError,
         r"pairwise\[0\]\.palette must be finite"),
        (PaletteTerm(features=np.ones((2, 8, 8))), ValueError,
         r"pairwise\[0\]\.features must have shape"),
        (PaletteTerm(features=np.full((2, 8, 9), np.nan)), ValueError,
         r"pairwise\[0\]\.features must be finite"),
        ([object()], TypeError, "pairwise must be a PairwiseTerm or PaletteTerm"),
        ([PaletteTerm(), "palette"], TypeError, "pairwise must be a PairwiseTerm or PaletteTerm"),
    ],
)
def test_bad_palette_arguments(pairwise, error, match):
    unary, image = _good()
    with pytest.raises(error, match=match):
        pac_crf(unary, image, pairwise=pairwise)


def test_appearance_palette_term_needs_the_image():
    unary, _ = _good()
    with pytest.raises(ValueError, match=r"pairwise\[0\].*needs the image"):
        pac_crf(unary, None, pairwise=PaletteTerm())
    with pytest.raises(ValueError, match=r"pairwise\[1\].*needs the image"):
        pac_crf(unary, None, pairwise=[PaletteTerm(features=np.ones((1, 8, 9))), PaletteTerm()])


# --------------------------------------------------------------------------------------------
# Inputs are not modified


def _inputs(dtype):
    rng = np.random.default_rng(3)
    unary = rng.normal(size=(2, 3, 10, 12)).astype(dtype)
    image = rng.random((2, 10, 12, 3)).astype(dtype)
    palette = rng.random((2, 4, 3)).astype(dtype)
    features = rng.random((2, 2, 10, 12)).astype(dtype)
    grad = rng.normal(size=unary.shape).astype(dtype)
    return unary, image, palette, features, grad


def _every_call(unary, image, palette, features, grad):
    terms = [PairwiseTerm(weight=1.0, kernel_size=3, dilation=1),
             PaletteTerm(weight=2.0, sigma_spatial=5.0, palette=palette, cell=4)]
    pac_crf(unary, image, pairwise=terms, num_steps=2)
    pac_crf(unary, image, pairwise=terms, num_steps=2, output="log")
    pac_crf(unary, None, num_steps=2, pairwise=PaletteTerm(features=features, cell=3))
    pac_crf_vjp(grad, unary, image, pairwise=terms, num_steps=2)
    pac_crf_vjp(grad, unary, image, pairwise=terms, num_steps=2, output="log",
                compatibility=np.eye(3))
    return terms


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inputs_are_not_written(palette_path, dtype):
    """Unary, image, palette, features and the output gradient keep their values; all but
    the unary are read-only as well (a write would raise)."""
    arrays = _inputs(dtype)
    copies = [a.copy() for a in arrays]
    for a in arrays[1:]:
        a.flags.writeable = False
    terms = _every_call(*arrays)
    for array, copy in zip(arrays, copies):
        np.testing.assert_array_equal(array, copy)
    assert terms[1].palette is arrays[2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_read_only_unary(dtype):
    arrays = _inputs(dtype)
    arrays[0].flags.writeable = False
    _every_call(*arrays)


# --------------------------------------------------------------------------------------------
# The CUDA backend on the NumPy-backed CuPy stand-in


@pytest.fixture
def device(emulator, monkeypatch):
    """The CuPy stand-in (``tests/_fake_cupy.py``), its kernel launches run on the CPU
    emulation of the CUDA kernels (skips without g++)."""
    from cuda_emulation import emulator as emu

    from _fake_cupy import install

    return install(monkeypatch, run=emu.EmulatedRuntime(emulator).run)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["default", "cell5+window+matrix"])
def test_cupy_stand_in_equals_the_cpu(device, case, dtype):
    """The CUDA backend's call (its window kernels emulated, the palette term on the generic
    code in the stand-in's namespace) equals the CPU backend's, default terms included."""
    from _fake_cupy import FakeArray

    if case == "default":
        rng = np.random.default_rng(8)
        unary = rng.normal(0.0, 1.5, (2, 3, 21, 25)).astype(dtype)
        image = rng.random((2, 21, 25, 3)).astype(dtype)
        image[1] = _two_colours(image[1])
        terms, options = None, {}
    else:
        unary, image, terms, options, _ = _case(case, dtype)
    tolerance = 1e-10 if dtype == np.float64 else 1e-5
    for output in ("probabilities", "log"):
        on_cpu = pac_crf(unary, image, pairwise=terms, num_steps=2, output=output, **options)
        device_options = dict(options)
        if "compatibility" in device_options:
            device_options["compatibility"] = device_options["compatibility"].view(FakeArray)
        on_device = pac_crf(np.ascontiguousarray(unary).view(FakeArray),
                            np.ascontiguousarray(image).view(FakeArray), pairwise=terms,
                            num_steps=2, output=output, **device_options)
        assert isinstance(on_device, FakeArray)
        assert on_device.shape == on_cpu.shape and on_device.dtype == on_cpu.dtype
        error = np.abs(np.asarray(on_device) - on_cpu) / np.maximum(1.0, np.abs(on_cpu))
        assert error.max() <= tolerance, (output, float(error.max()))


# --------------------------------------------------------------------------------------------
# The fused step's vector blocks at other vector widths

_NARROW_VECTORS = """
import sys
import llvmlite.binding as binding
import numba
numba.njit(lambda a: a + 1)(1)        # Numba's code generator made for the real CPU first
host = binding.get_host_cpu_features


def narrower():                       # then pacarray's vector width sees AVX2 or SSE only
    features = host()
    features["avx512f"] = False
    features["avx"] = sys.argv[2] == "avx2"
    return features


binding.get_host_cpu_features = narrower
sys.path.insert(0, sys.argv[1])
import numpy as np
from conftest import _assert_close
from test_crf_palette import CASES, _case, _expected
import pacarray
from pacarray._cpu import _crf_vector

assert _crf_vector.lanes(4) == (8 if sys.argv[2] == "avx2" else 4)
for case in ("cell5+window+matrix", "many_taps+20_colours", "two_taps+16_colours+log",
             "blocks:3x3+16_colours", "blocks:far_taps", "blocks:palette_only",
             "blocks:cross"):
    for dtype in (np.float32, np.float64):
        unary, image, terms, options, _ = _case(case, dtype)
        got = pacarray.pac_crf(unary, image, num_steps=2, pairwise=terms, **options)
        _assert_close(got, _expected(case, dtype), dtype)
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("vectors", ["avx2", "sse"])
def test_vector_blocks_of_narrower_machines_match_the_oracle(tmp_path, vectors):
    """The fused step's vector blocks (``pacarray/_cpu/_crf_vector.py``) take the host's widest
    vectors: 16 float32 lanes here with AVX-512, 8 with AVX2 and 4 with SSE only, where the
    palette lookup's 16-entry table no longer fits one vector. Each narrower width is forced
    in a fresh process (own Numba cache) and checked against the oracle on the cases that
    reach every block: the window blocks of 8, 2 and 1 taps and the overlapping last block,
    the permute lookup and the scalar slice of blocks that straddle a coarse column or of a
    palette over 16 entries."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    environment = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    done = subprocess.run(
        [sys.executable, "-c", _NARROW_VECTORS, str(Path(__file__).resolve().parent), vectors],
        capture_output=True, text=True, env=environment, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "ok"


@pytest.mark.parametrize("features", [3, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_assignment_equals_the_generic_one(features, dtype):
    """The CPU kernel's nearest palette entries (the colour path in pieces of 512 pixels
    within tasks of 4096) are the generic NumPy assignment's, ties to the first entry
    included, on images whose pixel counts end inside a piece and inside a task."""
    rng = np.random.default_rng(features)
    for shape in ((2, 70, 77), (1, 33, 200)):
        values = rng.integers(0, 4, (shape[0], features, *shape[1:])).astype(dtype) / 3
        palette = rng.integers(0, 4, (shape[0], 9, features)) / 3.0  # exact ties occur
        palette[:, 5] = palette[:, 2]  # a repeated entry: never chosen
        expected = _palette.assign(np, values, palette)
        got = cpu.crf_palette_assign(values, palette)
        assert got.dtype == np.int32 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        assert not np.any(got == 5)
