"""The picture of docs/guide/volumes.md: a noisy synthetic 3-D stack, bilateral-filtered as a
volume (one 3-D window, anisotropic voxel spacing) and slice by slice in 2-D, central slices.

Run: ``python docs/examples/volume_slice.py [output.png]`` (needs matplotlib); it prints the
RMS error of each result against the clean stack and returns them by panel title.
"""

import sys

import numpy as np

import pacarray


def synthetic_stack(shape=(40, 96, 96), seed=0):
    """Balls of different brightness in a (z, y, x) stack with voxels 2x longer along z, plus
    Gaussian noise: (clean, noisy), float32 on [0, 1]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    clean = np.full(shape, 0.2, dtype=np.float32)
    for _ in range(14):
        centre = rng.uniform((4, 10, 10), (shape[0] - 4, shape[1] - 10, shape[2] - 10))
        radius = rng.uniform(6, 16)
        inside = ((2 * (z - centre[0])) ** 2 + (y - centre[1]) ** 2
                  + (x - centre[2]) ** 2) < radius ** 2
        clean[inside] = rng.uniform(0.45, 0.9)
    noisy = clean + rng.normal(0, 0.08, shape).astype(np.float32)
    return clean, noisy


def main(path="volume_slice.png"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean, noisy = synthetic_stack()
    options = dict(sigma_spatial=2.0, sigma_color=0.15)
    volume = pacarray.bilateral_filter(noisy, spacing=(2.0, 1.0, 1.0), **options)
    slices = np.stack([pacarray.bilateral_filter(plane, **options) for plane in noisy])
    middle = noisy.shape[0] // 2
    panels = [("clean", clean), ("noisy", noisy), ("2-D, slice by slice", slices),
              ("3-D volume", volume)]
    errors = {}
    figure, axes = plt.subplots(1, 4, figsize=(12, 3.9), layout="constrained")
    for ax, (title, stack) in zip(axes, panels):
        rms = errors[title] = float(np.sqrt(np.mean((stack - clean) ** 2)))
        ax.imshow(stack[middle], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{title}\nRMS error {rms:.4f}" if title != "clean" else title)
        ax.set_axis_off()
        print(f"{title:22s} RMS error vs clean: {rms:.4f}")
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return errors


if __name__ == "__main__":
    main(*sys.argv[1:])
