"""pacarray: pixel-adaptive convolution and its special cases on plain arrays.

NumPy arrays run on the CPU (Numba), CuPy arrays on the GPU; see ``docs/architecture.md``.
Nothing here imports CuPy or compiles a kernel: that happens on first use.
"""

from . import testing
from .crf import PairwiseTerm, PaletteTerm, pac_crf, pac_crf_vjp
from .features import color_position_features
from .filters import bilateral_filter, joint_bilateral_upsample, normalized_convolution
from .filters_grad import bilateral_filter_vjp
from .gradients import pac_conv_transpose_vjp, pac_conv_vjp, pac_kernel_vjp, pac_pool_vjp
from .kernels import Gaussian, InversePower, pac_kernel, spatial_window
from .ops import pac_conv, pac_conv_transpose, pac_pool
from .pooling import detail_preserving_pool
from ._progress import progress
from ._warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "Gaussian",
    "InversePower",
    "PairwiseTerm",
    "PaletteTerm",
    "bilateral_filter",
    "bilateral_filter_vjp",
    "color_position_features",
    "detail_preserving_pool",
    "joint_bilateral_upsample",
    "normalized_convolution",
    "pac_conv",
    "pac_conv_transpose",
    "pac_conv_transpose_vjp",
    "pac_conv_vjp",
    "pac_crf",
    "pac_crf_vjp",
    "pac_kernel",
    "pac_kernel_vjp",
    "pac_pool",
    "pac_pool_vjp",
    "progress",
    "spatial_window",
    "testing",
    "warmup",
]
