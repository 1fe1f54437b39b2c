"""Generic implementations of the specialised backend entry points, in array-namespace code.

The image filters and the CRF call specialised entry points on the backend module that
:mod:`pacarray._dispatch` picks (``docs/design.md`` §3). The CPU backend has dedicated Numba
kernels for them; a backend without one (the CUDA backend today) re-exports the implementations
here, which are written once on top of the core operations (``pac_pool`` and its gradient) and
NumPy/CuPy array operations, so they run wherever the core runs.
"""

from __future__ import annotations

import types

from .filters import bilateral, joint_upsample
from .crf import (
    crf_add_adjoint,
    crf_add_messages,
    crf_block_mean,
    crf_prepare,
    crf_softmax,
    crf_step,
    crf_upsample_add,
)

#: The specialised entry points every backend module provides.
SPECIALISED = (
    "bilateral", "joint_upsample",
    "crf_add_messages", "crf_add_adjoint", "crf_step", "crf_softmax", "crf_prepare",
    "crf_block_mean", "crf_upsample_add",
)

#: Entry points a backend may add to accelerate the generic code, which runs without them
#: (``pacarray._palette``: the palette term's splat, slice, assignment and fused step).
OPTIONAL_PREFIXES = ("crf_palette_",)


def over(module):
    """A view of the backend ``module`` whose specialised entry points are the generic ones
    (its optional accelerations left out)."""
    names = {name: getattr(module, name) for name in dir(module)
             if not name.startswith("__") and not name.startswith(OPTIONAL_PREFIXES)}
    names.update({name: globals()[name] for name in SPECIALISED})
    return types.SimpleNamespace(__name__=module.__name__ + "[generic]", **names)


__all__ = [
    "OPTIONAL_PREFIXES", "SPECIALISED", "bilateral", "crf_add_adjoint", "crf_add_messages",
    "crf_block_mean", "crf_prepare", "crf_softmax", "crf_step", "crf_upsample_add",
    "joint_upsample", "over",
]
