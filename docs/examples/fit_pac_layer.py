"""Fit a pixel-adaptive convolution layer to a target with SciPy and pacarray's gradients.

A PAC layer ``y = pac_conv(x, W, guide=f, family=InversePower(alpha, lambda_))`` has three
kinds of parameters: the filter weights ``W`` and the two kernel parameters ``alpha`` and
``lambda_`` that decide how strongly the guide's edges shape each pixel's filter. This example
generates a target with known parameters on a crop of a real photograph, starts from random
weights and wrong kernel parameters, and recovers them with ``scipy.optimize.minimize`` using
the exact gradient from :func:`pacarray.gradients.pac_conv_vjp` (``jac=True``).

Run it with ``python docs/examples/fit_pac_layer.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from pacarray import InversePower, pac_conv
from pacarray.gradients import pac_conv_vjp

KERNEL_SIZE = 5
OUT_CHANNELS = 2
COLOUR_SCALE = 0.1        # colour differences of 0.1 count as distance 1 in the kernel
EPS = 0.25
TRUE_ALPHA, TRUE_LAMBDA = 0.05, -1.5
START_ALPHA, START_LAMBDA = 0.5, -0.5


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    initial_loss: float
    final_loss: float
    alpha: float
    lambda_: float
    weight: np.ndarray
    iterations: int


def layer_options(image):
    """Keywords of the PAC layer: guide from the image's colours, normalized kernel."""
    return dict(guide=image / COLOUR_SCALE, padding=KERNEL_SIZE // 2, normalize="kernel",
                smooth="gaussian")


def layer(image, weight, alpha, lambda_):
    family = InversePower(alpha, lambda_, eps=EPS)
    return pac_conv(image, weight, family=family, **layer_options(image))


def fit(image, *, seed=0, max_iterations=300) -> FitResult:
    """Fit weights, ``alpha`` and ``lambda_`` of :func:`layer` to a synthetic target.

    ``image`` is an ``(H, W, 3)`` RGB array (uint8 or float in [0, 1]).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.max() > 1.0:
        image = image / 255.0
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])      # (1, 3, H, W)
    rng = np.random.default_rng(seed)
    shape = (OUT_CHANNELS, 3, KERNEL_SIZE, KERNEL_SIZE)
    true_weight = rng.standard_normal(shape)
    target = layer(x, true_weight, TRUE_ALPHA, TRUE_LAMBDA)
    size = target.size
    weight_count = int(np.prod(shape))

    def loss_and_gradient(params):
        weight = params[:weight_count].reshape(shape)
        alpha, lambda_ = params[weight_count:]
        family = InversePower(alpha, lambda_, eps=EPS)
        residual = pac_conv(x, weight, family=family, **layer_options(x)) - target
        loss = 0.5 * float(np.vdot(residual, residual)) / size
        grads = pac_conv_vjp(residual / size, x, weight, family=family, **layer_options(x),
                             wrt=("weight", "alpha", "lambda_"))
        gradient = np.concatenate([grads.weight.ravel(), [grads.alpha, grads.lambda_]])
        return loss, gradient

    start = np.concatenate([0.1 * rng.standard_normal(weight_count),
                            [START_ALPHA, START_LAMBDA]])
    initial_loss, _ = loss_and_gradient(start)
    bounds = [(None, None)] * weight_count + [(0.0, 5.0), (-4.0, 2.0)]
    result = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B", bounds=bounds,
                      options=dict(maxiter=max_iterations, ftol=1e-15, gtol=1e-12))
    return FitResult(
        initial_loss=initial_loss,
        final_loss=float(result.fun),
        alpha=float(result.x[weight_count]),
        lambda_=float(result.x[weight_count + 1]),
        weight=result.x[:weight_count].reshape(shape),
        iterations=int(result.nit),
    )


def main():
    import numba

    from pacarray.data import sample_image

    # A 40 x 40 crop is too small to share between threads: each call would spend more on
    # waking threads (which also compete with SciPy's BLAS between calls) than it saves.
    numba.set_num_threads(1)
    crop = sample_image()[150:190, 180:220]          # the astronaut's face: edges and shading
    result = fit(crop)
    print(f"loss {result.initial_loss:.3e} -> {result.final_loss:.3e} "
          f"({result.initial_loss / result.final_loss:.1e}x lower) in {result.iterations} "
          "iterations")
    print(f"alpha   {START_ALPHA} -> {result.alpha:.4f} (true {TRUE_ALPHA})")
    print(f"lambda_ {START_LAMBDA} -> {result.lambda_:.4f} (true {TRUE_LAMBDA})")


if __name__ == "__main__":
    main()
