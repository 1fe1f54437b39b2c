"""Image-filter workloads: the bilateral filter against OpenCV and scikit-image, joint bilateral
upsampling.

* B-bilateral-512 / B-bilateral-2048: ``bilateral_filter`` on an RGB float32 photograph (the
  bundled sample, resized for 2048), radius 4, sigma_spatial 3, sigma_color 0.1, disk window, L1
  colour distance, mode "mirror": exactly ``cv2.bilateralFilter(img, 9, 0.1, 3)``, whose output
  must match (reference peer). Targets: time <= 1.0 x OpenCV, <= 0.1 x scikit-image's
  ``denoise_bilateral`` (its own Gaussian window and Euclidean colour distance; 512 only, it takes
  seconds at 2048).
* B-bilateral-8192: the same at 8192 x 8192, for the peak extra memory: <= 2 x the image's
  768 MiB (the output included).
* B-jbu: ``joint_bilateral_upsample`` x8, 64 x 64 -> 512 x 512, guided by the RGB photograph,
  sigma_spatial 1, sigma_color 0.1, radius 2 (25 samples per pixel); target <= 30 ms. Peer:
  bilinear upsampling with OpenCV (a lower bound: no guide).
"""

from __future__ import annotations

import importlib

import numpy as np

from ._harness import Case, Context, Peer, Workload

RADIUS, SIGMA_SPATIAL, SIGMA_COLOR = 4, 3.0, 0.1


def _optional(name: str, context: Context):
    if not context.peers:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _photo(size: int) -> np.ndarray:
    from pacarray.data import sample_image

    image = sample_image().astype(np.float32) / 255.0
    if size == image.shape[0]:
        return np.ascontiguousarray(image)
    from PIL import Image

    channels = [Image.fromarray(image[..., c]).resize((size, size), Image.BICUBIC)
                for c in range(3)]
    return np.clip(np.stack([np.asarray(c) for c in channels], axis=-1), 0, 1).astype(
        np.float32)


def _bilateral_case(context: Context, size: int, with_skimage: bool,
                    memory_target_mb: float | None) -> Case:
    from pacarray.filters import bilateral_filter

    if context.quick:
        size = 48
    image = _photo(size)
    case = Case(
        call=lambda: bilateral_filter(image, sigma_spatial=SIGMA_SPATIAL,
                                      sigma_color=SIGMA_COLOR, radius=RADIUS, window="disk",
                                      color_distance="l1", mode="mirror", channel_axis=-1),
        label=f"bilateral_filter RGB {size}x{size}",
        memory_target_mb=memory_target_mb,
    )
    cv2 = _optional("cv2", context)
    if cv2 is not None:
        cv2.setNumThreads(2)
        case.peers.append(Peer(
            "cv2.bilateralFilter",
            lambda: cv2.bilateralFilter(image, 2 * RADIUS + 1, SIGMA_COLOR, SIGMA_SPATIAL),
            role="same result", target=1.0, reference=True,
        ))
    else:
        case.notes.append("OpenCV peer skipped (pip install opencv-python-headless)")
    restoration = _optional("skimage.restoration", context) if with_skimage else None
    if restoration is not None:
        case.peers.append(Peer(
            "skimage denoise_bilateral",
            lambda: restoration.denoise_bilateral(
                image, win_size=2 * RADIUS + 1, sigma_color=SIGMA_COLOR,
                sigma_spatial=SIGMA_SPATIAL, channel_axis=-1, mode="reflect"),
            role="similar filter", target=0.1,
        ))
    elif with_skimage:
        case.notes.append("scikit-image peer skipped (pip install scikit-image)")
    return case


def _jbu_case(context: Context) -> Case:
    from pacarray.filters import joint_bilateral_upsample

    size, factor = (48, 8) if context.quick else (512, 8)
    guide = _photo(512)[:size, :size]
    low_size = size // factor
    rng = context.rng()
    low = rng.random((low_size, low_size), dtype=np.float32)
    case = Case(
        call=lambda: joint_bilateral_upsample(low, guide, sigma_spatial=1.0, sigma_color=0.1,
                                              radius=2),
        label=f"joint_bilateral_upsample x{factor}, {low_size}->{size}, RGB guide",
        notes=["target: <= 30 ms (issue #5)"],
    )
    cv2 = _optional("cv2", context)
    if cv2 is not None:
        case.peers.append(Peer(
            "cv2.resize bilinear (no guide)",
            lambda: cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR),
            role="lower bound",
        ))
    return case


WORKLOADS = [
    Workload("B-bilateral-512", "bilateral_filter RGB 512x512, r=4, disk, L1, mirror (OpenCV's)",
             lambda context: _bilateral_case(context, 512, True, None)),
    Workload("B-bilateral-2048", "bilateral_filter RGB 2048x2048, r=4, disk, L1, mirror",
             lambda context: _bilateral_case(context, 2048, False, None)),
    Workload("B-bilateral-8192", "bilateral_filter RGB 8192x8192: peak extra memory",
             lambda context: _bilateral_case(context, 8192, False,
                                             2 * 8192 * 8192 * 3 * 4 / 2**20)),
    Workload("B-jbu", "joint_bilateral_upsample x8, 64x64 -> 512x512, RGB guide",
             _jbu_case),
]
