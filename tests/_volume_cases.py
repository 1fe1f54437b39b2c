"""The parity grid of 1-D signals and 3-D volumes: pacarray against the float64 oracle.

The N-D twin of ``_parity_cases.py`` (issue 15): each case fixes the spatial rank (1 or 3),
the geometry (odd and one-sample sizes, borders, stride, dilation, anisotropic kernels such
as ``(1, 3, 5)``), the family, the normalization (with or without mask), the smoothing of the
centre feature (N-D Gaussian, box, user array), the spatial weight (N-D square, ball, per-axis
sigma), ``channel_wise``, the dtype and the batch size. Factor values are spread over the
cases by a seeded shuffle, as in ``_parity_cases.py``. ``prepared(rank, index)`` gives a
case's inputs and the oracle's outputs (every op, fused and explicit, transposed included).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

import pacarray
from _parity_cases import (
    DTYPES,
    FAMILIES,
    NORMALIZATIONS,
    PER_CHANNEL_ALPHA,
    PER_CHANNEL_LAMBDA,
    SMOOTHS,
    _spread,
)
from _tiers import tiered
from reference import (
    ref_conv,
    ref_conv_transpose,
    ref_kernel,
    ref_pool,
    ref_spatial_window,
    transposed_out_size,
)

# kernel_size, stride, padding, dilation, spatial shape (ints mean the same on every axis)
GEOMETRIES = {
    1: [
        ((1,), 1, 0, 1, (1,)),
        ((3,), 1, 1, 1, (1,)),          # one sample, both borders in one window
        ((3,), 1, 0, 1, (9,)),
        ((5,), 2, 4, 2, (7,)),          # the largest padding, strided and dilated
        ((3,), 3, 1, 2, (10,)),
        ((7,), 1, 3, 1, (9,)),
        ((5,), 3, 0, 1, (11,)),
        ((1,), 2, 0, 2, (6,)),
    ],
    3: [
        ((1, 3, 5), 1, (0, 1, 2), 1, (3, 4, 7)),             # anisotropic kernel
        ((3, 3, 3), 2, 1, 1, (5, 4, 5)),
        ((3, 1, 3), (1, 1, 2), (2, 0, 1), (2, 1, 1), (4, 3, 5)),
        ((3, 3, 3), 1, 0, 1, (3, 3, 3)),                     # a single output voxel
        ((5, 3, 1), (2, 1, 1), (2, 1, 0), 1, (5, 3, 2)),
        ((3, 3, 3), 1, 1, 1, (1, 1, 1)),                     # one voxel: every tap a border
        ((1, 1, 1), (1, 2, 1), 0, 1, (2, 3, 2)),
        ((3, 5, 3), (1, 2, 2), (1, 4, 1), (1, 2, 1), (3, 5, 4)),
    ],
}
SPATIALS = [None, "square", "disk", "disk_gauss"]
CASES_PER_RANK = 16


@dataclass(frozen=True)
class Case:
    rank: int
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
            f"{self.rank}d-{self.index}-k{k}s{s}p{p}d{d}-{'x'.join(map(str, size))}-"
            f"{self.family}-{self.normalize}{'+mask' if self.mask else ''}-sm{smooth}-"
            f"sw{self.spatial}-{'cw' if self.channel_wise else 'sh'}-"
            f"{np.dtype(self.dtype).name}-n{self.batch}"
        ).replace(" ", "")


def _make_cases(rank, count=CASES_PER_RANK):
    seed = 100 * rank
    geometries = _spread(GEOMETRIES[rank], count, seed + 1)
    families = _spread(list(FAMILIES), count, seed + 2)
    normalizations = _spread(NORMALIZATIONS, count, seed + 3)
    smooths = _spread(SMOOTHS, count, seed + 4)
    spatials = _spread(SPATIALS, count, seed + 5)
    channel_wise = _spread([False, True], count, seed + 6)
    dtypes = _spread(DTYPES, count, seed + 7)
    batches = _spread([1, 2], count, seed + 8)
    channels = _spread([1, 2, 3], count, seed + 9)
    cases = []
    for i in range(count):
        family = families[i]
        cw = channel_wise[i] or family.endswith("_pc")
        smooth = smooths[i]
        if family == "none":  # no guide: no channel-wise kernel, nothing to smooth
            cw, smooth = False, None
        normalize, mask = normalizations[i]
        cases.append(Case(rank, i, geometries[i], family, normalize, mask, smooth, spatials[i],
                          cw, dtypes[i], batches[i], channels[i]))
    return cases


CASES = {rank: _make_cases(rank) for rank in (1, 3)}


def _tuple(value, rank):
    return (int(value),) * rank if np.ndim(value) == 0 else tuple(int(v) for v in value)


def _as(dtype, array):
    return None if array is None else np.asarray(array, dtype=dtype)


def oracle_family(name, features):
    """(pacarray family object, oracle keywords) of a family name of ``_parity_cases.py``."""
    kind, alpha, lambda_, eps, asymmetric = FAMILIES[name]
    if alpha == "pc":
        alpha, lambda_ = PER_CHANNEL_ALPHA[:features], PER_CHANNEL_LAMBDA[:features]
    if kind == "gaussian":
        return pacarray.Gaussian(), dict(family="gaussian")
    if kind is None:
        return None, dict(family=None)
    obj = pacarray.InversePower(alpha, lambda_, eps=eps, asymmetric=asymmetric)
    return obj, dict(family="inverse_power", alpha=np.asarray(alpha),
                     lambda_=np.asarray(lambda_), eps=eps, asymmetric=asymmetric)


def spatial_array(kind, kernel_size, dilation):
    """The oracle's spatial weight of a kind; ``disk_gauss`` has one sigma per axis."""
    if kind is None:
        return None
    if kind == "square":
        return ref_spatial_window(kernel_size, 1.2, "square", dilation)
    if kind == "disk":
        return ref_spatial_window(kernel_size, None, "disk", dilation)
    sigma = (2.0, 1.0, 1.5)[:len(kernel_size)]
    return ref_spatial_window(kernel_size, sigma, "disk", dilation)


def user_smoothing(rng, rank, dtype):
    """An odd-sided, anisotropic smoothing array of rank ``rank``."""
    shape = {1: (5,), 2: (3, 5), 3: (3, 1, 5)}[rank]
    return _as(dtype, rng.random(shape) / 7.0)


def random_mask(rng, batch, shape):
    mask = rng.random((batch, 1) + tuple(shape))
    mask[mask < 0.25] = 0.0
    return mask


@dataclass
class Prepared:
    """Inputs (at the case's dtype) and the oracle's outputs (float64) of one case."""

    case: Case
    kernel_size: tuple
    x: np.ndarray
    guide: np.ndarray | None
    weight: np.ndarray
    shared_weight: np.ndarray
    bias: np.ndarray
    family_object: object
    options: dict
    geometry: dict
    K: np.ndarray
    valid: np.ndarray
    conv: np.ndarray
    conv_shared: np.ndarray
    pool: np.ndarray
    magnitude: dict  # oracle on absolute values: the rounding scale of each op's sums
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


@functools.lru_cache(maxsize=None)
def prepared(rank, index):
    case = CASES[rank][index]
    rng = np.random.default_rng(7000 + 100 * rank + index)
    dtype = case.dtype
    kernel_size, stride, padding, dilation, shape = case.geometry
    k = _tuple(kernel_size, rank)
    n, c = case.batch, case.channels
    features = c if case.channel_wise else 1 + index % 3
    family_object, oracle_options_family = oracle_family(case.family, features)
    has_guide = case.family != "none"
    scale = 0.8 if oracle_options_family["family"] == "gaussian" else 1.0
    smooth = user_smoothing(rng, rank, dtype) if case.smooth == "user" else case.smooth
    spatial = _as(dtype, spatial_array(case.spatial, k, _tuple(dilation, rank)))
    geometry = dict(stride=stride, padding=padding, dilation=dilation)

    def options(mask):
        out = dict(spatial_weight=spatial, mask=mask, normalize=case.normalize)
        if has_guide:
            out.update(smooth=smooth, channel_wise=case.channel_wise)
        return out

    def oracle_options(mask):
        oracle_smooth = _as(np.float64, smooth) if isinstance(smooth, np.ndarray) else smooth
        return dict(smooth=oracle_smooth, spatial_weight=_as(np.float64, spatial), mask=mask,
                    normalize=case.normalize, channel_wise=case.channel_wise,
                    **oracle_options_family)

    x = _as(dtype, rng.standard_normal((n, c) + shape))
    guide = _as(dtype, scale * rng.standard_normal((n, features) + shape))
    mask = random_mask(rng, n, shape) if case.mask else None
    weight = _as(dtype, rng.standard_normal((2, c) + k))
    shared_weight = _as(dtype, rng.standard_normal((1, 1) + k))
    bias = _as(dtype, rng.standard_normal(2))
    K, valid = ref_kernel(guide, k, stride, padding, dilation, **oracle_options(mask))
    conv = ref_conv(x, K, weight, bias, stride, padding, dilation)
    conv_shared = ref_conv(x, K, shared_weight, None, stride, padding, dilation)
    pool = ref_pool(x, K, None, stride, padding, dilation)
    absolute = dict(x=np.abs(x), K=np.abs(K))
    magnitude = dict(
        conv=np.max(ref_conv(absolute["x"], absolute["K"], np.abs(weight), np.abs(bias),
                             stride, padding, dilation)),
        conv_shared=np.max(ref_conv(absolute["x"], absolute["K"], np.abs(shared_weight), None,
                                    stride, padding, dilation)),
        pool=np.max(ref_pool(absolute["x"], absolute["K"], None, stride, padding, dilation)),
    )

    # Transposed: the largest legal output_padding on odd cases, 0 on even ones.
    s, p, d = (_tuple(v, rank) for v in (stride, padding, dilation))
    output_padding = tuple(max(ss, dd) - 1 for ss, dd in zip(s, d)) if index % 2 else (0,) * rank
    in_shape = tuple(max(1, size // ss) for size, ss in zip(shape, s))
    out_shape = tuple(transposed_out_size(*args)
                      for args in zip(in_shape, k, s, p, d, output_padding))
    geometry_t = dict(geometry, output_padding=output_padding)
    xt = _as(dtype, rng.standard_normal((n, c) + in_shape))
    guide_t = _as(dtype, scale * rng.standard_normal((n, features) + out_shape))
    mask_t = random_mask(rng, n, out_shape) if case.mask else None
    weight_t = _as(dtype, rng.standard_normal((c, 2) + k))
    shared_weight_t = _as(dtype, rng.standard_normal((1, 1) + k))
    K_t, valid_t = ref_kernel(guide_t, k, stride, padding, dilation, transposed=True,
                              **oracle_options(mask_t))
    conv_t = ref_conv_transpose(xt, K_t, weight_t, bias, stride, padding, dilation,
                                output_padding)
    conv_t_shared = ref_conv_transpose(xt, K_t, shared_weight_t, None, stride, padding,
                                       dilation, output_padding)
    magnitude["conv_t"] = np.max(ref_conv_transpose(
        np.abs(xt), np.abs(K_t), np.abs(weight_t), np.abs(bias), stride, padding, dilation,
        output_padding))
    magnitude["conv_t_shared"] = np.max(ref_conv_transpose(
        np.abs(xt), np.abs(K_t), np.abs(shared_weight_t), None, stride, padding, dilation,
        output_padding))
    return Prepared(
        case, k, x, guide if has_guide else None, weight, shared_weight, bias, family_object,
        options(mask), geometry, K, valid, conv, conv_shared, pool, magnitude,
        xt, guide_t if has_guide else None, weight_t, shared_weight_t, options(mask_t),
        geometry_t, K_t, valid_t, conv_t, conv_t_shared,
    )


def fused_kwargs(prep, transposed=False):
    guide = prep.guide_t if transposed else prep.guide
    kwargs = dict(prep.options_t if transposed else prep.options)
    kwargs.update(prep.geometry_t if transposed else prep.geometry)
    if guide is not None:
        kwargs.update(guide=guide, family=prep.family_object)
    return kwargs


def explicit_kwargs(prep, K, transposed=False):
    kwargs = dict(prep.geometry_t if transposed else prep.geometry)
    kwargs["kernel"] = np.asarray(K, dtype=prep.case.dtype)
    return kwargs


def _factors(case):
    kernel_size, stride, _, dilation, _ = case.geometry
    smooth = case.smooth[0] if isinstance(case.smooth, tuple) else case.smooth
    return {
        ("family", case.family), ("normalize", case.normalize, case.mask),
        ("smooth", str(smooth)), ("spatial", case.spatial), ("cw", case.channel_wise),
        ("dtype", np.dtype(case.dtype).name), ("strided", np.max(stride) > 1),
        ("dilated", np.max(dilation) > 1), ("output_padding", case.index % 2 == 1),
    }


def case_params(guided_only=False):
    """``(rank, index)`` parameters of every case; a greedy cover of the factors per rank
    (every family, normalization, smoothing, spatial weight, dtype and kind of geometry
    once) stays in the quick tier, the rest is marked slow."""
    params, quick = [], []
    for rank, cases in CASES.items():
        chosen = [case for case in cases if not guided_only or case.family != "none"]
        wanted = set().union(*(_factors(case) for case in chosen))
        while wanted:
            best = max(chosen, key=lambda case: len(_factors(case) & wanted))
            quick.append((rank, best.index))
            wanted -= _factors(best)
        params.extend((rank, case.index) for case in chosen)
    ids = [CASES[rank][index].id for rank, index in params]
    tagged = [pytest.param(rank, index, id=case_id)
              for (rank, index), case_id in zip(params, ids)]
    return tiered(tagged, [params.index(q) for q in quick])
