"""Core workloads: fused PAC convolution and pooling with a Gaussian adaptive kernel.

* B-conv16: ``pac_conv`` 16 -> 16 channels, 256 x 256, k = 5, padding 2, Gaussian K from an
  8-channel guide, computed on the fly (the fused ``guide=`` path, what a user gets by default).
* B-conv64: ``pac_conv`` 64 -> 64 channels, 128 x 128, k = 3, padding 1, same kernel.
* B-pool: ``pac_pool`` stride 2, k = 5, padding 2, 16 channels, 256 x 256, Gaussian K from an RGB
  guide, ``normalize="kernel"``.
* B-convT: ``pac_conv_transpose`` 16 -> 16 channels, 128 x 128 -> 256 x 256 (k = 5, stride 2,
  padding 2, output_padding 1), Gaussian K from an 8-channel guide at the output's resolution:
  the learned upsampling of a decoder. Peers ``F.conv_transpose2d`` (lower bound, target 1.5)
  and :func:`unfold_pac` on the input with zeros inserted (same result).
* B-conv3d: ``pac_conv`` 8 -> 8 channels on a 64^3 volume, k = 3, padding 1, Gaussian K from a
  4-channel guide (fused); peer ``F.conv3d`` at the same shape. B-conv3d-grad: the same forward
  then ``pac_conv_vjp`` (x, weight, guide), against the forward alone.

Peers: PyTorch's ``F.conv2d`` / ``F.avg_pool2d`` at the same shapes (lower bounds: no adaptive
kernel at all) and :func:`unfold_pac`, PAC written the way a deep-learning framework does it
(unfold input and guide, kernel from the unfolded guide, multiply, einsum with the weights),
whose output must equal pacarray's. The targets are those of the project's issue #2, tightened
by issue #19: at most 1.5x the PyTorch lower bound for B-conv16, B-conv64, B-pool and B-conv3d
(``docs/guide/benchmarks.md``, "pac_conv on an AVX-512 machine").
"""

from __future__ import annotations

import numpy as np

from ._harness import Case, Context, Peer, Workload

TORCH_MISSING = ("PyTorch peers skipped (turned off, or not installed: "
                 "pip install 'pacarray[bench]')")


def unfold_pac(torch, x, guide, weight, kernel_size: int, *, stride: int = 1, padding: int = 0,
               normalize: str | None = None):
    """PAC through ``F.unfold`` + ``einsum``: O(C k^2 H W) memory, as in framework code.

    ``weight=None`` pools (sums the K-weighted taps of each channel). Out-of-range taps get
    K = 0, as pacarray defines them (this matters for the normalizer only).
    """
    functional = torch.nn.functional
    n, c, h, w = x.shape
    taps = kernel_size * kernel_size
    h_out = (h + 2 * padding - kernel_size) // stride + 1
    w_out = (w + 2 * padding - kernel_size) // stride + 1
    geometry = dict(kernel_size=kernel_size, padding=padding, stride=stride)
    columns = functional.unfold(x, **geometry).view(n, c, taps, h_out, w_out)
    guide_columns = functional.unfold(guide, **geometry).view(n, guide.shape[1], taps, h_out,
                                                              w_out)
    centre = guide_columns[:, :, taps // 2: taps // 2 + 1]
    kernel = torch.exp(-0.5 * (guide_columns - centre).pow(2).sum(1))
    inside = functional.unfold(x.new_ones(1, 1, h, w), **geometry).view(1, taps, h_out, w_out)
    kernel = kernel * inside
    if normalize == "kernel":
        kernel = kernel / kernel.sum(1, keepdim=True)
    weighted = columns * kernel[:, None]
    if weight is None:
        return weighted.sum(2)
    return torch.einsum("ncahw,oca->nohw", weighted, weight.reshape(weight.shape[0], c, taps))


def _conv_flops(out_channels: int, channels: int, taps: int, pixels: int) -> float:
    """Useful flops of a PAC convolution: ``C_out * C * T`` multiply-adds per output pixel (2
    flops each, what ``F.conv2d`` does) plus the ``C * T`` products ``K * x``. Evaluating K
    itself (distances, exponentials) is not counted."""
    return float((2 * out_channels + 1) * channels * taps * pixels)


def _guide(context: Context, channels: int, size: int) -> np.ndarray:
    # Features whose differences are of order one, as for a colour image divided by its range
    # bandwidth: kernel values spread over (0, 1] rather than all 1 or all underflowing.
    rng = np.random.default_rng([context.seed, channels])
    return (2.0 * rng.random((1, channels, size, size), dtype=np.float32)).astype(np.float32)


def conv_weight(rng: np.random.Generator, channels: int, kernel_size: int) -> np.ndarray:
    """A ``(C, C, k, k)`` float32 filter of unit-variance outputs (normal / sqrt(C k^2))."""
    weight = rng.standard_normal((channels, channels, kernel_size, kernel_size),
                                 dtype=np.float32) / np.sqrt(channels * kernel_size**2)
    return weight.astype(np.float32)


def _conv_case(context: Context, channels: int, size: int, kernel_size: int,
               guide_channels: int, conv_target: float, unfold_target: float,
               memory_target_mb: float | None) -> Case:
    import pacarray

    if context.quick:
        size = 24
    padding = (kernel_size - 1) // 2
    rng = context.rng()
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    guide = _guide(context, guide_channels, size)
    weight = conv_weight(rng, channels, kernel_size)
    x_dev, guide_dev, weight_dev = (context.asarray(a) for a in (x, guide, weight))
    family = pacarray.Gaussian()

    case = Case(
        call=lambda: pacarray.pac_conv(x_dev, weight_dev, guide=guide_dev, family=family,
                                       padding=padding),
        label="pac_conv (fused K)",
        memory_target_mb=memory_target_mb,
        flops=_conv_flops(channels, channels, kernel_size**2, size * size),
    )
    torch = context.torch()
    if torch is None:
        case.notes.append(TORCH_MISSING)
        return case
    xt, guide_t, weight_t = (context.torch_tensor(torch, a) for a in (x, guide, weight))

    def conv2d():
        with torch.inference_mode():
            return torch.nn.functional.conv2d(xt, weight_t, padding=padding)

    def unfold():
        with torch.inference_mode():
            return unfold_pac(torch, xt, guide_t, weight_t, kernel_size, padding=padding)

    case.peers += [
        Peer("torch F.conv2d", conv2d, role="lower bound", target=conv_target),
        Peer("torch unfold+einsum PAC", unfold, role="same result", target=unfold_target,
             reference=True),
    ]
    return case


def build_conv16(context: Context) -> Case:
    return _conv_case(context, channels=16, size=256, kernel_size=5, guide_channels=8,
                      conv_target=1.5, unfold_target=1 / 8, memory_target_mb=64.0)


def build_conv64(context: Context) -> Case:
    return _conv_case(context, channels=64, size=128, kernel_size=3, guide_channels=8,
                      conv_target=1.5, unfold_target=None, memory_target_mb=None)


def build_pool(context: Context) -> Case:
    import pacarray

    size = 24 if context.quick else 256
    channels, kernel_size, stride, padding = 16, 5, 2, 2
    rng = context.rng()
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    guide = _guide(context, 3, size)
    x_dev, guide_dev = context.asarray(x), context.asarray(guide)
    family = pacarray.Gaussian()

    case = Case(
        call=lambda: pacarray.pac_pool(x_dev, kernel_size, guide=guide_dev, family=family,
                                       stride=stride, padding=padding, normalize="kernel"),
        label="pac_pool (fused K)",
        # a multiply-add K * x per tap, channel and output pixel (stride 2: (size / 2)^2)
        flops=float(2 * channels * kernel_size**2 * ((size + 2 * padding - kernel_size)
                                                      // stride + 1) ** 2),
    )
    torch = context.torch()
    if torch is None:
        case.notes.append(TORCH_MISSING)
        return case
    xt, guide_t = context.torch_tensor(torch, x), context.torch_tensor(torch, guide)

    def avg_pool2d():
        with torch.inference_mode():
            return torch.nn.functional.avg_pool2d(xt, kernel_size, stride=stride,
                                                  padding=padding, count_include_pad=False)

    def unfold():
        with torch.inference_mode():
            return unfold_pac(torch, xt, guide_t, None, kernel_size, stride=stride,
                              padding=padding, normalize="kernel")

    case.peers += [
        Peer("torch F.avg_pool2d", avg_pool2d, role="lower bound", target=1.5),
        Peer("torch unfold PAC pool", unfold, role="same result", reference=True),
    ]
    return case


def unfold_pac_transpose(torch, x, guide, weight, kernel_size: int, *, stride: int,
                         padding: int, output_padding: int):
    """Transposed PAC through :func:`unfold_pac`: ``x`` with ``stride - 1`` zeros inserted
    between its pixels (on an output-sized grid), convolved with the flipped, transposed
    ``(C, C_out, k, k)`` weight and padding ``k - 1 - padding``, the kernel from the guide at the
    output's resolution. The centre of the kernel's window is the output pixel only for
    ``padding == (k - 1) // 2``, which this formulation assumes."""
    if 2 * padding != kernel_size - 1:
        raise ValueError("unfold_pac_transpose needs padding == (kernel_size - 1) // 2")
    n, channels, height, width = x.shape
    out_h = (height - 1) * stride - 2 * padding + kernel_size + output_padding
    out_w = (width - 1) * stride - 2 * padding + kernel_size + output_padding
    spread = x.new_zeros((n, channels, out_h, out_w))
    spread[:, :, : (height - 1) * stride + 1: stride, : (width - 1) * stride + 1: stride] = x
    flipped = weight.flip(-1, -2).transpose(0, 1)
    return unfold_pac(torch, spread, guide, flipped, kernel_size,
                      padding=kernel_size - 1 - padding)


def build_convt(context: Context) -> Case:
    import pacarray

    channels, kernel_size, stride, padding, output_padding = 16, 5, 2, 2, 1
    size = 12 if context.quick else 128
    out = (size - 1) * stride - 2 * padding + kernel_size + output_padding
    rng = context.rng()
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    guide = _guide(context, 8, out)
    weight = conv_weight(rng, channels, kernel_size)
    x_dev, guide_dev, weight_dev = (context.asarray(a) for a in (x, guide, weight))
    geometry = dict(stride=stride, padding=padding, output_padding=output_padding)
    case = Case(
        call=lambda: pacarray.pac_conv_transpose(x_dev, weight_dev, guide=guide_dev,
                                                 family=pacarray.Gaussian(), **geometry),
        label="pac_conv_transpose (fused K), stride 2",
        # the useful products: each output pixel has about k^2 / s^2 taps with a source
        flops=_conv_flops(channels, channels, kernel_size**2, size * size),
    )
    torch = context.torch()
    if torch is None:
        case.notes.append(TORCH_MISSING)
        return case
    xt, guide_t, weight_t = (context.torch_tensor(torch, a) for a in (x, guide, weight))

    def conv_transpose2d():
        with torch.inference_mode():
            return torch.nn.functional.conv_transpose2d(xt, weight_t, **geometry)

    def unfold():
        with torch.inference_mode():
            return unfold_pac_transpose(torch, xt, guide_t, weight_t, kernel_size, **geometry)

    case.peers += [
        Peer("torch F.conv_transpose2d", conv_transpose2d, role="lower bound", target=1.5),
        Peer("torch unfold+einsum PAC, zeros inserted", unfold, role="same result",
             reference=True),
    ]
    return case


def _volume_arrays(context: Context):
    """Input, guide, weight and upstream gradient of the B-conv3d workloads (float32)."""
    channels, kernel_size, guide_channels = 8, 3, 4
    size = 12 if context.quick else 64
    rng = context.rng()
    shape = (1, channels, size, size, size)
    x = rng.standard_normal(shape, dtype=np.float32)
    guide = (2.0 * np.random.default_rng([context.seed, guide_channels]).random(
        (1, guide_channels, size, size, size), dtype=np.float32)).astype(np.float32)
    weight = (rng.standard_normal((channels, channels, *(kernel_size,) * 3), dtype=np.float32)
              / np.sqrt(channels * kernel_size**3)).astype(np.float32)
    grad_y = rng.standard_normal(shape, dtype=np.float32)
    return x, guide, weight, grad_y, (kernel_size - 1) // 2


def build_conv3d(context: Context) -> Case:
    import pacarray

    x, guide, weight, _, padding = _volume_arrays(context)
    x_dev, guide_dev, weight_dev = (context.asarray(a) for a in (x, guide, weight))
    family = pacarray.Gaussian()
    case = Case(
        call=lambda: pacarray.pac_conv(x_dev, weight_dev, guide=guide_dev, family=family,
                                       padding=padding),
        label="pac_conv 3-D (fused K)",
        flops=_conv_flops(x.shape[1], x.shape[1], weight.shape[2] ** 3, x[0, 0].size),
    )
    torch = context.torch()
    if torch is None:
        case.notes.append(TORCH_MISSING)
        return case
    xt, weight_t = context.torch_tensor(torch, x), context.torch_tensor(torch, weight)

    def conv3d():
        with torch.inference_mode():
            return torch.nn.functional.conv3d(xt, weight_t, padding=padding)

    case.peers.append(Peer("torch F.conv3d", conv3d, role="lower bound", target=1.5))
    return case


def build_conv3d_grad(context: Context) -> Case:
    import pacarray
    from pacarray.gradients import pac_conv_vjp

    x, guide, weight, grad_y, padding = _volume_arrays(context)
    x_dev, guide_dev, weight_dev, grad_dev = (context.asarray(a)
                                              for a in (x, guide, weight, grad_y))
    options = dict(guide=guide_dev, family=pacarray.Gaussian(), padding=padding)

    def forward_and_backward():
        pacarray.pac_conv(x_dev, weight_dev, **options)
        return pac_conv_vjp(grad_dev, x_dev, weight_dev, **options).x

    case = Case(call=forward_and_backward,
                label="pac_conv + pac_conv_vjp 3-D (x, weight, guide), fused Gaussian K")
    case.peers.append(Peer("pacarray forward only",
                           lambda: pacarray.pac_conv(x_dev, weight_dev, **options),
                           role="forward", target=3.0))
    return case


WORKLOADS = [
    Workload("B-conv16", "pac_conv 16->16, 256x256, k=5, Gaussian K from 8 guide channels",
             build_conv16, devices=("cpu", "gpu")),
    Workload("B-conv64", "pac_conv 64->64, 128x128, k=3, Gaussian K from 8 guide channels",
             build_conv64, devices=("cpu", "gpu")),
    Workload("B-pool", "pac_pool 16 channels, 256x256, k=5, stride 2, normalized Gaussian K "
             "from RGB", build_pool, devices=("cpu", "gpu")),
    Workload("B-convT", "pac_conv_transpose 16->16, 128x128 -> 256x256, k=5, stride 2, "
             "Gaussian K from 8 guide channels", build_convt, devices=("cpu", "gpu")),
    Workload("B-conv3d", "pac_conv 8->8, 64^3 volume, k=3, Gaussian K from 4 guide channels",
             build_conv3d, devices=("cpu", "gpu")),
    Workload("B-conv3d-grad", "pac_conv forward + vjp (x, weight, guide), B-conv3d shapes",
             build_conv3d_grad, devices=("cpu", "gpu")),
]
