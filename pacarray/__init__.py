"""pacarray: pixel-adaptive convolution and its special cases on plain arrays.

NumPy arrays run on the CPU (Numba), CuPy arrays on the GPU; see ``docs/architecture.md``.
"""

from .kernels import Gaussian, InversePower, pac_kernel, spatial_window
from .ops import pac_conv, pac_conv_transpose, pac_pool

__version__ = "0.1.0"

__all__ = [
    "Gaussian",
    "InversePower",
    "pac_conv",
    "pac_conv_transpose",
    "pac_kernel",
    "pac_pool",
    "spatial_window",
]
