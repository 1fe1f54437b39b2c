"""Integer codes shared by the front end, the Numba kernels and the CUDA sources.

Defined once here; ``pacarray/_cuda/pac_common.cuh`` repeats them as enumerators (C++ cannot
import Python) and ``tests/test_codes.py`` checks that both agree.
"""

FAMILY_CONSTANT = 0
FAMILY_GAUSSIAN = 1
FAMILY_INVERSE = 2
FAMILY_INVERSE_ASYMMETRIC = 3

NORMALIZE_NONE = 0
NORMALIZE_KERNEL = 1
NORMALIZE_MASK = 2
NORMALIZE_MASK_KERNEL = 3

#: ``normalize=`` keyword -> code.
NORMALIZE_CODES = {
    None: NORMALIZE_NONE,
    "kernel": NORMALIZE_KERNEL,
    "mask": NORMALIZE_MASK,
    "mask_kernel": NORMALIZE_MASK_KERNEL,
}
