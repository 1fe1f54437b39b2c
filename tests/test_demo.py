"""The demo job, its bilateral filter wiring and the bundled sample image."""

import numpy as np
import pytest

from pacarray.__main__ import main as cli_main
from pacarray.data import sample_image
from pacarray.demo import bilateral, psnr, run_demo


def _bilateral_direct(image, radius, sigma_spatial, sigma_color):
    """Textbook bilateral filter in float64, out-of-image taps left out."""
    height, width, _ = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for i in range(height):
        for j in range(width):
            total = np.zeros(image.shape[2])
            weight_sum = 0.0
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    if radius and (dy / radius) ** 2 + (dx / radius) ** 2 > 1:
                        continue
                    y, x = i + dy, j + dx
                    if not (0 <= y < height and 0 <= x < width):
                        continue
                    colour = np.sum((image[i, j] - image[y, x]) ** 2.0)
                    weight = np.exp(-(dy * dy + dx * dx) / (2 * sigma_spatial**2)
                                    - colour / (2 * sigma_color**2))
                    total += weight * image[y, x]
                    weight_sum += weight
            out[i, j] = total / weight_sum
    return out


@pytest.mark.parametrize("radius, shape", [(1, (5, 7, 3)), (2, (9, 6, 3)), (3, (4, 11, 3))])
def test_bilateral_matches_direct_formula(radius, shape):
    rng = np.random.default_rng(radius)
    image = rng.random(shape)
    expected = _bilateral_direct(image, radius, sigma_spatial=1.5, sigma_color=0.2)
    result = bilateral(image, radius=radius, sigma_spatial=1.5, sigma_color=0.2)
    assert result.shape == shape
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


def test_bilateral_keeps_a_step_edge_and_flattens_noise():
    rng = np.random.default_rng(1)
    step = np.zeros((24, 24, 3))
    step[:, 12:] = 1.0
    noisy = step + rng.normal(0, 0.05, step.shape)
    result = bilateral(noisy, radius=3, sigma_spatial=2.0, sigma_color=0.2)
    assert np.std(result[:, :10] - step[:, :10]) < 0.5 * np.std(noisy[:, :10] - step[:, :10])
    # the edge stays sharp: the columns either side are still about one apart
    assert np.mean(result[:, 12] - result[:, 11]) > 0.9


def test_psnr_values():
    reference = np.zeros((4, 4))
    assert psnr(reference, reference) == np.inf
    assert psnr(reference, np.full((4, 4), 255.0)) == pytest.approx(0.0)
    assert psnr(reference, np.full((4, 4), 25.5)) == pytest.approx(20.0)


def test_sample_image_is_the_bundled_photograph():
    image = sample_image()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert not image.flags.writeable
    assert sample_image() is image
    # a real photograph, not a placeholder: a wide range of values in every channel
    assert all(np.ptp(image[..., c]) > 200 for c in range(3))


def test_demo_writes_side_by_side_and_denoises(tmp_path):
    from PIL import Image

    output = tmp_path / "sub" / "demo.png"
    result = run_demo(output, noise=20.0, seed=3)
    assert result.output == output and output.exists()
    canvas = np.asarray(Image.open(output))
    assert canvas.shape == (512, 2 * 512 + 8, 3)
    assert result.psnr_filtered > result.psnr_noisy + 4.0
    left, right = canvas[:, :512], canvas[:, 520:]
    clean = sample_image()
    assert psnr(clean, left) == pytest.approx(result.psnr_noisy, abs=1e-9)
    assert psnr(clean, right) == pytest.approx(result.psnr_filtered, abs=1e-9)
    assert result.first_call_s > 0 and result.warm_call_s > 0


def test_demo_rejects_negative_noise(tmp_path):
    with pytest.raises(ValueError, match="noise"):
        run_demo(tmp_path / "x.png", noise=-1.0)


def test_cli_without_command_prints_usage(capsys):
    assert cli_main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_cli_demo(tmp_path, capsys):
    output = tmp_path / "cli.png"
    assert cli_main(["demo", "--output", str(output), "--noise", "15"]) == 0
    text = capsys.readouterr().out
    assert output.exists()
    assert "PSNR" in text and "first call" in text and "second call" in text
