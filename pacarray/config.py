"""Tunable settings, read at call time (tests and benchmarks may patch them).

Attributes
----------
WORKSPACE_BYTES : int
    Upper bound of the temporary "K-weighted patches" buffer used by the BLAS path of
    ``pac_conv`` / ``pac_conv_transpose`` (per call, not per thread). Larger values mean fewer,
    bigger matrix products; the fused path's memory stays O(input + output + workspace).
"""

WORKSPACE_BYTES = 8 * 2**20
