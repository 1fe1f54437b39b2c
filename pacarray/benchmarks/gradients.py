"""Gradient workloads: forward + backward (vector-Jacobian products) of the fused PAC ops.

* B-conv16-grad: ``pac_conv`` then ``pac_conv_vjp`` for B-conv16's shapes (16 -> 16 channels,
  256 x 256, k = 5, Gaussian K from an 8-channel guide, fused), gradients with respect to
  ``x``, ``weight`` and ``guide``.
* B-conv64-grad: the same for B-conv64 (64 -> 64 channels, 128 x 128, k = 3).
* B-pool-grad: ``pac_pool`` then ``pac_pool_vjp`` for B-pool's shapes (stride 2, k = 5,
  normalized Gaussian K from RGB), gradients with respect to ``x`` and ``guide``.

Peers, measured in the same child: pacarray's forward alone (the ratio says what a backward
pass costs on top; target 2.5 for the convolutions, issue #19's, which docs/guide/benchmarks.md
shows to be out of reach while the backward computes twice the forward's products) and PyTorch
autograd through the
unfold + einsum PAC of :mod:`pacarray.benchmarks.core` (target: at least 5x faster). Both
sides compute every gradient listed and return the one with respect to ``x``, which the
harness compares (``tests/_gradient_cases.py`` compares all of them with PyTorch's).
"""

from __future__ import annotations

import numpy as np

from ._harness import Case, Context, Peer, Workload
from .core import TORCH_MISSING, _guide, conv_weight, unfold_pac


def _torch_grad_case(case: Case, context: Context, arrays, forward, target):
    """Add the PyTorch autograd peer: ``forward(*tensors)``, then ``autograd.grad`` with respect
    to all of them; returns the first one's gradient."""
    torch = context.torch()
    if torch is None:
        case.notes.append(TORCH_MISSING)
        return
    *inputs, grad_y = (context.torch_tensor(torch, a) for a in arrays)

    def autograd():
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        y = forward(torch, *leaves)
        return torch.autograd.grad(y, leaves, grad_y)[0]

    case.peers.append(Peer("torch autograd, unfold+einsum PAC", autograd, role="same result",
                           target=target, reference=True))


def _conv_grad_case(context: Context, channels: int, size: int, kernel_size: int) -> Case:
    import pacarray
    from pacarray.gradients import pac_conv_vjp

    if context.quick:
        size = 24
    padding = (kernel_size - 1) // 2
    rng = context.rng()
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    guide = _guide(context, 8, size)
    weight = conv_weight(rng, channels, kernel_size)
    grad_y = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    x_dev, guide_dev, weight_dev, grad_dev = (context.asarray(a) for a in (x, guide, weight,
                                                                              grad_y))
    family = pacarray.Gaussian()
    options = dict(guide=guide_dev, family=family, padding=padding)

    def forward_and_backward():
        pacarray.pac_conv(x_dev, weight_dev, **options)
        return pac_conv_vjp(grad_dev, x_dev, weight_dev, **options).x

    case = Case(call=forward_and_backward,
                label="pac_conv + pac_conv_vjp (x, weight, guide), fused Gaussian K")
    case.peers.append(Peer("pacarray forward only",
                           lambda: pacarray.pac_conv(x_dev, weight_dev, **options),
                           role="forward", target=2.5))

    def torch_forward(torch, xt, weight_t, guide_t):
        return unfold_pac(torch, xt, guide_t, weight_t, kernel_size, padding=padding)

    _torch_grad_case(case, context, (x, weight, guide, grad_y), torch_forward, target=1 / 5)
    return case


def build_conv16_grad(context: Context) -> Case:
    return _conv_grad_case(context, channels=16, size=256, kernel_size=5)


def build_conv64_grad(context: Context) -> Case:
    return _conv_grad_case(context, channels=64, size=128, kernel_size=3)


def build_pool_grad(context: Context) -> Case:
    import pacarray
    from pacarray.gradients import pac_pool_vjp

    size = 24 if context.quick else 256
    channels, kernel_size, stride, padding = 16, 5, 2, 2
    rng = context.rng()
    x = rng.standard_normal((1, channels, size, size), dtype=np.float32)
    guide = _guide(context, 3, size)
    out = (size + 2 * padding - kernel_size) // stride + 1
    grad_y = rng.standard_normal((1, channels, out, out), dtype=np.float32)
    x_dev, guide_dev, grad_dev = (context.asarray(a) for a in (x, guide, grad_y))
    options = dict(guide=guide_dev, family=pacarray.Gaussian(), stride=stride, padding=padding,
                   normalize="kernel")

    def forward_and_backward():
        pacarray.pac_pool(x_dev, kernel_size, **options)
        return pac_pool_vjp(grad_dev, x_dev, kernel_size, **options).x

    case = Case(call=forward_and_backward,
                label="pac_pool + pac_pool_vjp (x, guide), fused normalized Gaussian K")
    case.peers.append(Peer("pacarray forward only",
                           lambda: pacarray.pac_pool(x_dev, kernel_size, **options),
                           role="forward"))

    def torch_forward(torch, xt, guide_t):
        return unfold_pac(torch, xt, guide_t, None, kernel_size, stride=stride, padding=padding,
                          normalize="kernel")

    _torch_grad_case(case, context, (x, guide, grad_y), torch_forward, target=None)
    return case


WORKLOADS = [
    Workload("B-conv16-grad", "pac_conv forward + vjp (x, weight, guide), B-conv16 shapes",
             build_conv16_grad, devices=("cpu", "gpu")),
    Workload("B-conv64-grad", "pac_conv forward + vjp (x, weight, guide), B-conv64 shapes",
             build_conv64_grad, devices=("cpu", "gpu")),
    Workload("B-pool-grad", "pac_pool forward + vjp (x, guide), B-pool shapes",
             build_pool_grad, devices=("cpu", "gpu")),
]
