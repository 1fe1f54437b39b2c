"""Tunable settings, read at call time (tests and benchmarks may patch them).

Attributes
----------
WORKSPACE_BYTES : int
    Upper bound of the temporary per-band accumulators of the CPU backward passes (weight
    gradients): the fused path's memory stays O(input + output + workspace).
"""

WORKSPACE_BYTES = 8 * 2**20
