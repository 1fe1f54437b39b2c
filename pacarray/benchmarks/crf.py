"""CRF workload: PAC-CRF mean-field inference.

* B-crf: :func:`pacarray.pac_crf`, 21 labels (PASCAL VOC's count), 256 x 256, 5 mean-field
  steps, one 5 x 5 appearance kernel (the default :class:`pacarray.PairwiseTerm`: dilation 3,
  ``sigma_spatial=6``, ``sigma_color=0.08``, weight 2), float32, on the bundled photograph
  (2 x 2 means of the 512 x 512 sample) with random logits.

Peer: :func:`unfold_crf`, the same mean field written the way a deep-learning framework does it
(unfold the marginals, multiply by the kernel computed once from the unfolded features, sum,
Potts compatibility, softmax), whose output must equal pacarray's. Target: 60 ms median for
pacarray (the project's issue #6); the issue puts the unfold baseline at about 0.7 s, hence the
ratio target 1/12.
"""

from __future__ import annotations

import numpy as np

from ._harness import Case, Context, Peer, Workload

TORCH_MISSING = ("PyTorch peer skipped (turned off, or not installed: "
                 "pip install 'pacarray[bench]')")

LABELS = 21
STEPS = 5


def unfold_crf(torch, unary, image, *, steps, kernel_size, dilation, sigma_spatial,
               sigma_color, weight):
    """PAC-CRF mean field through ``F.unfold``: O(L k^2 H W) memory per step.

    ``unary`` ``(1, L, H, W)`` logits, ``image`` ``(1, C, H, W)`` on [0, 1]. The kernel
    ``exp(-|offset|^2 / (2 sigma_spatial^2) - |colour difference|^2 / (2 sigma_color^2))``
    (centre tap and out-of-image taps 0) is computed once and reused by every step.
    """
    functional = torch.nn.functional
    _, labels, height, width = unary.shape
    taps = kernel_size * kernel_size
    radius = (kernel_size - 1) // 2
    geometry = dict(kernel_size=kernel_size, dilation=dilation, padding=dilation * radius)
    features = functional.unfold(image / sigma_color, **geometry)
    features = features.view(1, image.shape[1], taps, height, width)
    centre = features[:, :, taps // 2: taps // 2 + 1]
    offsets = dilation * (torch.arange(kernel_size, dtype=unary.dtype) - radius)
    distance2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
    spatial = torch.exp(-distance2 / (2 * sigma_spatial**2)).reshape(1, taps, 1, 1)
    spatial[0, taps // 2] = 0.0
    inside = functional.unfold(unary.new_ones(1, 1, height, width), **geometry)
    kernel = torch.exp(-0.5 * (features - centre).pow(2).sum(1)) * spatial
    kernel = kernel * inside.view(1, taps, height, width)
    q = torch.softmax(unary, dim=1)
    for _ in range(steps):
        columns = functional.unfold(q, **geometry).view(1, labels, taps, height, width)
        message = (columns * kernel[:, None]).sum(2)
        # Potts: the cost of label l is the message mass of all the other labels.
        potts = message.sum(1, keepdim=True) - message
        q = torch.softmax(unary - weight * potts, dim=1)
    return q


def _photograph(size: int) -> np.ndarray:
    from ..data import sample_image

    image = np.asarray(sample_image(), dtype=np.float32) / np.float32(255)
    factor = image.shape[0] // size
    image = image[: size * factor, : size * factor]
    return image.reshape(size, factor, size, factor, 3).mean(axis=(1, 3), dtype=np.float32)


def build_crf(context: Context) -> Case:
    from ..crf import PairwiseTerm, pac_crf

    size = 32 if context.quick else 256
    rng = context.rng()
    unary = rng.normal(0.0, 2.0, (LABELS, size, size)).astype(np.float32)
    image = _photograph(size)
    term = PairwiseTerm()
    unary_dev, image_dev = context.asarray(unary), context.asarray(image)

    case = Case(
        call=lambda: pac_crf(unary_dev, image_dev, num_steps=STEPS, pairwise=[term]),
        label="pac_crf (5 steps)",
        memory_target_mb=8 * unary.nbytes / 1e6,
        notes=[f"one appearance term: {term.kernel_size}x{term.kernel_size} taps, dilation "
               f"{term.dilation}, sigma_spatial {term.sigma_spatial}, sigma_color "
               f"{term.sigma_color}, weight {term.weight}; target <= 60 ms median (issue #6); "
               "memory target: 8 x the unary's size (O(labels x pixels))"],
    )
    torch = context.torch()
    if torch is None:
        case.notes.append(TORCH_MISSING)
        return case
    unary_t = context.torch_tensor(torch, unary[None])
    image_t = context.torch_tensor(torch, np.ascontiguousarray(image.transpose(2, 0, 1)[None]))

    def unfold():
        with torch.inference_mode():
            q = unfold_crf(torch, unary_t, image_t, steps=STEPS, kernel_size=term.kernel_size,
                           dilation=term.dilation, sigma_spatial=term.sigma_spatial,
                           sigma_color=term.sigma_color, weight=term.weight)
            return q[0]

    case.peers.append(
        Peer("torch unfold mean field", unfold, role="same result", target=1 / 12,
             reference=True)
    )
    return case


WORKLOADS = [
    Workload("B-crf", "pac_crf 21 labels, 256x256, 5 steps, one 5x5 appearance kernel",
             build_crf, devices=("cpu", "gpu")),
]
