"""pacarray.warmup and ``pacarray warmup``: ahead-of-time compilation in worker processes."""

from __future__ import annotations

import io

import pytest

import pacarray
from pacarray import cli
from pacarray._warmup import WARMUP_FUNCTIONS, _plan


def test_warmup_runs_a_task_in_a_worker_and_reports_progress():
    stream = io.StringIO()
    timings = pacarray.warmup(["pac_kernel"], processes=1, file=stream)
    assert list(timings) == [("pac_kernel", "float32")]
    assert timings["pac_kernel", "float32"] > 0
    assert "pacarray warmup: 1/1 compiled (pac_kernel, float32" in stream.getvalue()


@pytest.mark.parametrize(
    "keywords, message",
    [(dict(functions=["pac_kernel", "nope"]), "nope"),
     (dict(functions=["pac_kernel"], dtypes=["float16"]), "float16")],
)
def test_warmup_rejects_unknown_names(keywords, message):
    with pytest.raises(ValueError, match=message):
        pacarray.warmup(**keywords, progress=False)


def test_every_task_names_a_public_function_or_group():
    public = set(pacarray.__all__) | {"image_filters"}
    assert set(WARMUP_FUNCTIONS) <= public


def test_cli_warmup_rejects_unknown_function(capsys):
    assert cli.main(["warmup", "nope"]) == 2
    assert "pacarray warmup: error: unknown FUNCTION nope" in capsys.readouterr().err


def test_plan_keeps_each_dtype_in_its_own_processes():
    names = list(WARMUP_FUNCTIONS)
    tasks = [(name, dtype) for dtype in ("float32", "float64") for name in names]
    two = _plan(tasks, 2)
    assert [sorted(group) for group in two] == [sorted(tasks[:len(names)]),
                                                sorted(tasks[len(names):])]
    assert two[0][0] == ("pac_conv_vjp", "float32")  # heaviest first
    four = _plan(tasks, 4)
    assert len(four) == 4 and sorted(sum(four, [])) == sorted(tasks)
    assert all(len({dtype for _, dtype in group}) == 1 for group in four)
    one = _plan(tasks, 1)
    assert one == [tasks]
    float32 = tasks[:len(names)]
    single = _plan(float32, 2)
    assert len(single) == 2 and all(single) and sorted(sum(single, [])) == sorted(float32)
