"""The curated grid of parity cases: pacarray against the float64 oracle (tests/reference.py).

Each case fixes the geometry, the kernel family, the normalization (with or without mask), the
smoothing, the spatial weight, ``channel_wise``, the dtype and the batch size. The values of
every factor are spread over the cases by a seeded shuffle (each value appears several times,
combinations vary) rather than a cartesian product, so the grid stays fast. ``prepared(index)``
gives a case's inputs and the oracle's outputs; the parity test of each op (``test_pac_kernel``
in ``test_pac_kernel.py``, and likewise for conv, conv_transpose and pool) checks the
explicit-K path, the fused (``guide=``) path or the no-kernel path of that op, and
fused == explicit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

import pacarray
from _tiers import tiered
from reference import (
    ref_conv,
    ref_conv_transpose,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
    transposed_out_size,
)

# kernel_size, stride, padding, dilation, (H, W)
GEOMETRIES = [
    (1, 1, 0, 1, (1, 1)),
    (1, 2, 0, 1, (5, 4)),
    (3, 1, 1, 1, (1, 1)),
    (3, 1, 0, 1, (5, 7)),
    (3, 2, 1, 1, (7, 6)),
    (3, 3, 1, 2, (9, 11)),
    (5, 1, 2, 1, (6, 9)),
    (5, 2, 4, 2, (3, 5)),
    ((3, 5), (1, 2), (0, 2), 1, (4, 9)),
    ((3, 5), (2, 1), (1, 1), (2, 1), (7, 5)),
    (5, 3, 0, 1, (9, 11)),
    ((5, 3), (1, 3), (2, 1), (1, 2), (5, 8)),
    (3, 2, 0, 2, (5, 5)),
    (1, 1, 0, 2, (2, 3)),
]
# name -> (kind, alpha, lambda_, eps, asymmetric); alpha/lambda_ "pc" means per channel.
FAMILIES = {
    "gaussian": ("gaussian", None, None, None, False),
    "inverse": ("inverse_power", 0.5, -1.0, 1e-2, False),
    "inverse_asym": ("inverse_power", 0.2, -0.5, 0.1, True),
    "inverse_pos": ("inverse_power", 0.0, 2.0, 0.0, False),
    "inverse_pc": ("inverse_power", "pc", "pc", 0.05, False),
    "inverse_asym_pc": ("inverse_power", "pc", "pc", 1e-2, True),
    "none": (None, None, None, None, False),
}
PER_CHANNEL_ALPHA = (0.1, 0.5, 1.0)
PER_CHANNEL_LAMBDA = (-1.0, -0.5, 1.0)
NORMALIZATIONS = [
    (None, False),
    (None, True),
    ("kernel", False),
    ("kernel", True),
    ("mask", True),
    ("mask_kernel", True),
]
SMOOTHS = [None, "gaussian", ("average", 3), "user"]
SPATIALS = [None, "square", "disk", "disk_gauss"]
DTYPES = [np.float64, np.float32]


@dataclass(frozen=True)
class Case:
    index: int
    geometry: tuple
    family: str
    normalize: str | None
    mask: bool
    smooth: object
    spatial: str | None
    channel_wise: bool
    dtype: type
    batch: int
    channels: int

    @property
    def id(self):
        k, s, p, d, size = self.geometry
        smooth = self.smooth[0] if isinstance(self.smooth, tuple) else self.smooth
        return (
            f"{self.index}-k{k}s{s}p{p}d{d}-{size[0]}x{size[1]}-{self.family}-"
            f"{self.normalize}{'+mask' if self.mask else ''}-sm{smooth}-sw{self.spatial}-"
            f"{'cw' if self.channel_wise else 'sh'}-{np.dtype(self.dtype).name}-n{self.batch}"
        )


def _spread(values, count, seed):
    """``values`` repeated to ``count`` entries and shuffled with a fixed seed."""
    repeated = [values[i % len(values)] for i in range(count)]
    order = np.random.default_rng(seed).permutation(count)
    return [repeated[i] for i in order]


def _make_cases(count=48):
    geometries = _spread(GEOMETRIES, count, 1)
    families = _spread(list(FAMILIES), count, 2)
    normalizations = _spread(NORMALIZATIONS, count, 3)
    smooths = _spread(SMOOTHS, count, 4)
    spatials = _spread(SPATIALS, count, 5)
    channel_wise = _spread([False, True], count, 6)
    dtypes = _spread(DTYPES, count, 7)
    batches = _spread([1, 2], count, 8)
    channels = _spread([1, 2, 3], count, 9)
    cases = []
    for i in range(count):
        family = families[i]
        cw = channel_wise[i] or family.endswith("_pc")
        smooth = smooths[i]
        if family == "none":  # no guide: no channel-wise kernel, nothing to smooth
            cw, smooth = False, None
        normalize, mask = normalizations[i]
        cases.append(
            Case(i, geometries[i], family, normalize, mask, smooth, spatials[i], cw, dtypes[i],
                 batches[i], channels[i])
        )
    return cases


CASES = _make_cases()
CASE_IDS = [case.id for case in CASES]


def _pair(value):
    return (value, value) if np.ndim(value) == 0 else tuple(value)


@dataclass
class Prepared:
    """Inputs (at the case's dtype) and the oracle's outputs (float64) of one case."""

    case: Case
    x: np.ndarray
    guide: np.ndarray | None
    weight: np.ndarray
    shared_weight: np.ndarray
    bias: np.ndarray
    family_object: object
    options: dict  # smooth / spatial_weight / mask / normalize / channel_wise for the fused path
    geometry: dict
    K: np.ndarray
    valid: np.ndarray
    conv: np.ndarray
    conv_shared: np.ndarray
    pool: np.ndarray
    # transposed op
    xt: np.ndarray
    guide_t: np.ndarray | None
    weight_t: np.ndarray
    shared_weight_t: np.ndarray
    options_t: dict
    geometry_t: dict
    K_t: np.ndarray
    valid_t: np.ndarray
    conv_t: np.ndarray
    conv_t_shared: np.ndarray


def _as(dtype, array):
    return None if array is None else np.asarray(array, dtype=dtype)


def _oracle_family(case, features):
    kind, alpha, lambda_, eps, asymmetric = FAMILIES[case.family]
    if alpha == "pc":
        alpha, lambda_ = PER_CHANNEL_ALPHA[:features], PER_CHANNEL_LAMBDA[:features]
    if kind == "gaussian":
        return pacarray.Gaussian(), dict(family="gaussian")
    if kind is None:
        return None, dict(family=None)
    obj = pacarray.InversePower(alpha, lambda_, eps=eps, asymmetric=asymmetric)
    return obj, dict(family="inverse_power", alpha=np.asarray(alpha), lambda_=np.asarray(lambda_),
                     eps=eps, asymmetric=asymmetric)


def _spatial(kind, kernel_size, dilation):
    if kind is None:
        return None
    if kind == "square":
        return ref_spatial_window(kernel_size, 1.2, "square", dilation)
    if kind == "disk":
        return ref_spatial_window(kernel_size, None, "disk", dilation)
    return ref_spatial_window(kernel_size, 2.0, "disk", dilation)


def _mask(rng, batch, shape):
    mask = rng.random((batch, 1) + shape)
    mask[mask < 0.25] = 0.0
    return mask


@functools.lru_cache(maxsize=None)
def prepared(index):
    case = CASES[index]
    rng = np.random.default_rng(1000 + index)
    dtype = case.dtype
    kernel_size, stride, padding, dilation, (height, width) = case.geometry
    kh, kw = _pair(kernel_size)
    n, c = case.batch, case.channels
    features = c if case.channel_wise else 1 + index % 3
    family_object, oracle_family = _oracle_family(case, features)
    has_guide = case.family != "none"
    scale = 0.8 if oracle_family["family"] == "gaussian" else 1.0

    smooth = case.smooth
    if smooth == "user":
        smooth = _as(dtype, rng.random((3, 5)) / 7.0)
    spatial = _as(dtype, _spatial(case.spatial, (kh, kw), dilation))
    geometry = dict(stride=stride, padding=padding, dilation=dilation)

    def options(mask):
        out = dict(spatial_weight=spatial, mask=mask, normalize=case.normalize)
        if has_guide:
            out.update(smooth=smooth, channel_wise=case.channel_wise)
        return out

    def oracle_options(mask):
        oracle_smooth = _as(np.float64, smooth) if isinstance(smooth, np.ndarray) else smooth
        return dict(smooth=oracle_smooth, spatial_weight=_as(np.float64, spatial), mask=mask,
                    normalize=case.normalize, channel_wise=case.channel_wise, **oracle_family)

    x = _as(dtype, rng.standard_normal((n, c, height, width)))
    guide = _as(dtype, scale * rng.standard_normal((n, features, height, width)))
    mask = _mask(rng, n, (height, width)) if case.mask else None
    weight = _as(dtype, rng.standard_normal((2, c, kh, kw)))
    shared_weight = _as(dtype, rng.standard_normal((1, 1, kh, kw)))
    bias = _as(dtype, rng.standard_normal(2))
    K, valid = ref_kernel(guide, (kh, kw), stride, padding, dilation, **oracle_options(mask))
    conv = ref_conv(x, K, weight, bias, stride, padding, dilation)
    conv_shared = ref_conv(x, K, shared_weight, None, stride, padding, dilation)
    pool = ref_pool(x, K, None, stride, padding, dilation)

    # Transposed: the largest legal output_padding on odd cases, 0 on even ones.
    sy, sx = _pair(stride)
    dy, dx = _pair(dilation)
    output_padding = (
        (max(sy, dy) - 1, max(sx, dx) - 1) if index % 2 else (0, 0)
    )
    in_h, in_w = max(1, height // sy), max(1, width // sx)
    py, px = _pair(padding)
    out_h = transposed_out_size(in_h, kh, sy, py, dy, output_padding[0])
    out_w = transposed_out_size(in_w, kw, sx, px, dx, output_padding[1])
    geometry_t = dict(geometry, output_padding=output_padding)
    xt = _as(dtype, rng.standard_normal((n, c, in_h, in_w)))
    guide_t = _as(dtype, scale * rng.standard_normal((n, features, out_h, out_w)))
    mask_t = _mask(rng, n, (out_h, out_w)) if case.mask else None
    weight_t = _as(dtype, rng.standard_normal((c, 2, kh, kw)))
    shared_weight_t = _as(dtype, rng.standard_normal((1, 1, kh, kw)))
    K_t, valid_t = ref_kernel(guide_t, (kh, kw), stride, padding, dilation, transposed=True,
                              **oracle_options(mask_t))
    conv_t = ref_conv_transpose(xt, K_t, weight_t, bias, stride, padding, dilation,
                                output_padding)
    conv_t_shared = ref_conv_transpose(xt, K_t, shared_weight_t, None, stride, padding,
                                       dilation, output_padding)
    return Prepared(
        case, x, guide if has_guide else None, weight, shared_weight, bias, family_object,
        options(mask), geometry, K, valid, conv, conv_shared, pool,
        xt, guide_t if has_guide else None, weight_t, shared_weight_t, options(mask_t),
        geometry_t, K_t, valid_t, conv_t, conv_t_shared,
    )


def _fused_kwargs(prep, transposed=False):
    guide = prep.guide_t if transposed else prep.guide
    kwargs = dict(prep.options_t if transposed else prep.options)
    kwargs.update(prep.geometry_t if transposed else prep.geometry)
    if guide is not None:
        kwargs.update(guide=guide, family=prep.family_object)
    return kwargs


def _explicit_kwargs(prep, K, transposed=False):
    kwargs = dict(prep.geometry_t if transposed else prep.geometry)
    kwargs["kernel"] = np.asarray(K, dtype=prep.case.dtype)
    return kwargs


GUIDED = [case.index for case in CASES if case.family != "none"]  # pac_kernel needs a guide


def _factors(case):
    """The values that ``case`` gives to the grid's factors (geometry summarized)."""
    kernel_size, stride, _, dilation, _ = case.geometry
    smooth = case.smooth[0] if isinstance(case.smooth, tuple) else case.smooth
    return {
        ("family", case.family), ("normalize", case.normalize, case.mask),
        ("smooth", str(smooth)), ("spatial", case.spatial), ("cw", case.channel_wise),
        ("dtype", np.dtype(case.dtype).name), ("batch", case.batch),
        ("channels", case.channels), ("kernel_size", str(kernel_size)),
        ("strided", max(_pair(stride)) > 1), ("dilated", max(_pair(dilation)) > 1),
        ("output_padding", case.index % 2 == 1),
    }


def quick_cases(indices):
    """Positions in ``indices`` (case indices) of the cases that stay in the quick test tier.

    A greedy cover: few cases that between them give every factor every value it takes in
    ``indices`` (7 of the 48 cases), so the quick tier still runs every family, normalization,
    smoothing, spatial weight, dtype and kind of geometry once per op.
    """
    indices = list(indices)
    wanted = set().union(*(_factors(CASES[i]) for i in indices))
    chosen = []
    while wanted:
        best = max(range(len(indices)), key=lambda k: len(_factors(CASES[indices[k]]) & wanted))
        chosen.append(best)
        wanted -= _factors(CASES[indices[best]])
    return chosen


def tiered_cases(indices):
    """``indices`` as the parameters of a parity test: all but the quick cases marked slow."""
    indices = list(indices)
    return tiered(indices, quick_cases(indices))


def _dilate(w, dilation):
    """Taps ``w`` spread ``dilation`` apart, zeros between (for the special-case oracles)."""
    dy, dx = dilation
    out = np.zeros((dy * (w.shape[0] - 1) + 1, dx * (w.shape[1] - 1) + 1))
    out[::dy, ::dx] = w
    return out


