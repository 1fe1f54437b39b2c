"""The README's example code runs as written (its shapes are the ones its comments state)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _example_blocks():
    text = README.read_text()
    section = text.split("## Example", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_example_section_runs_and_its_shapes_hold():
    blocks = _example_blocks()
    assert len(blocks) >= 2, "the Example section shows an image and a volume"
    namespace: dict = {}
    for block in blocks:  # later blocks use the names of earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["smoothed"].shape == (1, 3, 64, 64)
    assert namespace["y"].shape == (1, 8, 64, 64)
    assert namespace["denoised"].shape == namespace["stack"].shape
    assert namespace["denoised"].dtype == namespace["stack"].dtype
    assert namespace["y3d"].shape == (1, 4, 24, 64, 64)
    assert namespace["signal"].shape == (1, 1, 1000)
