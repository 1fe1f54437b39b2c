"""Fit the pairwise weights of a PAC-CRF to annotated images by gradient descent.

:func:`pacarray.pac_crf_vjp` returns the gradient of a loss on the refined marginals with
respect to every pairwise term's weight (and the unary weight and the unary itself), so the
weights can be learnt from a few annotated images with nothing but NumPy. This example:

1. cuts crops out of a photograph (the bundled sample) and labels them with k-means on colour
   (the "annotation"), and degrades those labels into the unaries of a coarse, noisy
   classifier (the protocol of the segmentation guide: 8x block means upsampled, plus noise);
2. starts from weak weights and minimizes the mean cross-entropy of ``pac_crf``'s
   log-marginals on the training crops by gradient descent on the logarithms of the weights
   (which keeps them positive), with the exact gradient of :func:`pacarray.pac_crf_vjp`;
3. compares the mean IoU on held-out crops before and after.

Run it with ``python docs/examples/fit_crf_weights.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacarray import PairwiseTerm, PaletteTerm, pac_crf, pac_crf_vjp
from pacarray.benchmarks.crf import degraded_unary, kmeans_labels, mean_iou

#: The terms whose weights are fitted: edge-aware windows at dilations 1 and 4 (short and
#: middle range) and a palette term (every pixel of similar colour within reach; its Gaussian
#: and cells scaled to the small crops).
DILATIONS = (1, 4)
PALETTE_SIGMA, PALETTE_CELL = 40.0, 8
SIGMA_COLOR = 0.05
START_WEIGHTS = (0.2, 0.2, 0.2)
CLASSES = 4
STEPS = 5


@dataclass
class Example:
    """One annotated image: the picture, its labels and the classifier's log-probabilities."""

    image: np.ndarray  # (H, W, 3) on [0, 1]
    truth: np.ndarray  # (H, W) labels
    unary: np.ndarray  # (L, H, W) log-probabilities


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    weights: tuple  # fitted weights, one per term
    losses: list  # training loss before each iteration, and after the last
    train_iou: tuple  # (with the start weights, with the fitted weights)
    held_out_iou: tuple  # (unary alone, start weights, fitted weights)


def terms(weights):
    """The pairwise terms with the given weights: the windows', then the palette term's."""
    windows = [PairwiseTerm(weight=float(w), kernel_size=3, dilation=d, sigma_spatial=None,
                            sigma_color=SIGMA_COLOR) for w, d in zip(weights, DILATIONS)]
    palette = PaletteTerm(weight=float(weights[len(DILATIONS)]), sigma_spatial=PALETTE_SIGMA,
                          sigma_color=SIGMA_COLOR, cell=PALETTE_CELL)
    return [*windows, palette]


def make_examples(image, crop, count, seed=0, noise=2.0):
    """``count`` random ``crop x crop`` crops of ``image`` with k-means labels (one k-means
    for the whole of ``image``) and degraded unaries. With Potts compatibility nothing depends
    on what a label means, so crops labelled by different k-means runs can be mixed."""
    rng = np.random.default_rng(seed)
    truth = kmeans_labels(image, CLASSES, seed=seed)
    examples = []
    for index in range(count):
        y = rng.integers(0, image.shape[0] - crop + 1)
        x = rng.integers(0, image.shape[1] - crop + 1)
        window = (slice(y, y + crop), slice(x, x + crop))
        labels = truth[window]
        unary = degraded_unary(labels, CLASSES, factor=8, noise=noise, seed=seed + index)
        examples.append(Example(np.ascontiguousarray(image[window]), labels, unary))
    return examples


def loss_and_gradient(examples, weights):
    """Mean cross-entropy of the refined marginals and its gradient w.r.t. the weights."""
    loss, gradient, pixels = 0.0, np.zeros(len(weights)), 0
    for example in examples:
        target = (example.truth[None] == np.arange(CLASSES)[:, None, None]).astype(np.float32)
        log_q = pac_crf(example.unary, example.image, num_steps=STEPS, pairwise=terms(weights),
                        output="log")
        loss -= float(np.sum(target * log_q))
        # d(-sum target * log_q) / d(log_q) = -target
        grads = pac_crf_vjp(-target, example.unary, example.image, num_steps=STEPS,
                            pairwise=terms(weights), output="log")
        gradient += np.asarray(grads.weights)
        pixels += example.truth.size
    return loss / pixels, gradient / pixels


def mean_iou_of(examples, weights):
    """Mean IoU of the CRF's labels over the examples (``weights=None``: the unary alone)."""
    scores = []
    for example in examples:
        if weights is None:
            labels = example.unary.argmax(axis=0)
        else:
            labels = pac_crf(example.unary, example.image, num_steps=STEPS,
                             pairwise=terms(weights), output="labels")
        scores.append(mean_iou(labels, example.truth, CLASSES))
    return float(np.mean(scores))


def fit(train, held_out, iterations=30, learning_rate=0.5, start=START_WEIGHTS):
    """Gradient descent on ``log(weights)`` with a step that halves when the loss rises."""
    log_weights = np.log(np.asarray(start, dtype=np.float64))
    loss, gradient = loss_and_gradient(train, np.exp(log_weights))
    losses = [loss]
    for _ in range(iterations):
        # chain rule: dL/d(log w) = w * dL/dw
        candidate = log_weights - learning_rate * np.exp(log_weights) * gradient
        new_loss, new_gradient = loss_and_gradient(train, np.exp(candidate))
        if new_loss > loss:
            learning_rate /= 2
            continue
        log_weights, loss, gradient = candidate, new_loss, new_gradient
        losses.append(loss)
    weights = tuple(float(w) for w in np.exp(log_weights))
    return FitResult(
        weights=weights,
        losses=losses,
        train_iou=(mean_iou_of(train, start), mean_iou_of(train, weights)),
        held_out_iou=(mean_iou_of(held_out, None), mean_iou_of(held_out, start),
                      mean_iou_of(held_out, weights)),
    )


def photograph(factor=2):
    """The bundled sample photograph reduced by ``factor`` (block means), on [0, 1]."""
    from pacarray.data import sample_image

    image = np.asarray(sample_image(), dtype=np.float32) / np.float32(255)
    size = image.shape[0] // factor
    return image.reshape(size, factor, size, factor, 3).mean(axis=(1, 3), dtype=np.float32)


def main():
    image = photograph(factor=2)  # 256 x 256
    # Training crops from the left half, held-out crops from the right half: no pixel is seen
    # by both.
    train = make_examples(image[:, :128], crop=96, count=4, seed=0)
    held_out = make_examples(image[:, 128:], crop=96, count=4, seed=1)
    result = fit(train, held_out)
    print(f"training loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} "
          f"({len(result.losses) - 1} accepted steps)")
    print("weights", START_WEIGHTS, "->", tuple(round(w, 2) for w in result.weights))
    print(f"training mean IoU {result.train_iou[0]:.3f} -> {result.train_iou[1]:.3f}")
    print(f"held-out mean IoU: unary {result.held_out_iou[0]:.3f}, start weights "
          f"{result.held_out_iou[1]:.3f}, fitted weights {result.held_out_iou[2]:.3f}")


if __name__ == "__main__":
    main()
