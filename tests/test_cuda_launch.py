"""Launch configuration of the CUDA backend (pure Python: no CuPy, no GPU)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from pacarray._cuda import _loader, launch


@pytest.mark.parametrize("total, block, max_blocks, expected", [
    (1, 256, 100, 1),
    (256, 256, 100, 1),
    (257, 256, 100, 2),
    (0, 256, 100, 1),
    (10**9, 256, 1 << 20, 1 << 20),
    (1000, 32, 3, 3),
])
def test_grid_size(total, block, max_blocks, expected):
    assert launch.grid_size(total, block, max_blocks) == expected


def test_grid_size_covers_the_work_without_an_empty_block():
    for total in range(1, 2000, 37):
        blocks = launch.grid_size(total, 64, 10**6)
        assert (blocks - 1) * 64 < total <= blocks * 64


@pytest.mark.parametrize("bad", [(-1, 256, 10), (10, 0, 10), (10, 256, 0)])
def test_grid_size_rejects_nonsense(bad):
    with pytest.raises(ValueError, match="invalid launch"):
        launch.grid_size(*bad)


def test_index_type_switches_at_two_to_the_31():
    limit = 2**31 - 1
    assert launch.index_dtype(100, [limit], 1) == np.int32
    assert launch.index_dtype(100, [limit + 1], 1) == np.int64
    # The grid-stride index runs up to total + launched threads - 1.
    assert launch.index_dtype(limit - 255, [10], 256) == np.int32
    assert launch.index_dtype(limit - 254, [10], 256) == np.int64


def test_plan_packs_total_with_the_index_type(monkeypatch):
    x = np.zeros(10, np.float32)
    planned = launch.plan("pac_fill", np.float32, 1000, [x.size], (x, np.int32(3)))
    assert planned.grid == 4 and planned.block == 256
    assert planned.index_dtype == np.int32
    assert type(planned.args[0]) is np.int32 and planned.args[0] == 1000
    assert planned.args[1] is x and planned.args[2] == 3
    monkeypatch.setattr(launch, "INT32_MAX", 500)
    big = launch.plan("pac_fill", np.float64, 1000, [x.size], (x,))
    assert big.index_dtype == np.int64 and type(big.args[0]) is np.int64
    assert _loader.name_expression(big.kernel, big.dtype, big.index_dtype) == (
        "pac_fill<double, long long>"
    )


@pytest.mark.parametrize("block", [48, 0, 2048])
def test_plan_rejects_blocks_that_are_not_whole_warps(monkeypatch, block):
    monkeypatch.setattr(launch, "BLOCK_THREADS", block)
    with pytest.raises(ValueError, match="BLOCK_THREADS"):
        launch.plan("pac_fill", np.float32, 10, [10], ())


def test_int32_packs_numpy_scalars():
    values = launch.int32(1, True, np.int64(7))
    assert [type(v) for v in values] == [np.int32] * 3
    assert values == (1, 1, 7)


def test_description_args_order_and_types():
    spec = types.SimpleNamespace(
        guide=np.zeros((2, 3, 5, 6)), centre=np.ones((2, 3, 5, 6)), alpha=np.zeros(1),
        lam=np.zeros(1), spatial=np.ones((3, 5)), mask=np.zeros((2, 5, 6)), eps2=1e-4,
        guide_shape=(5, 6), family=2, has_mask=True, normalize=3, channel_wise=False,
    )
    args = launch.description_args(spec, (3, 5), (1, 2), (1, 0), (1, 1), np.float32)
    assert args[0] is spec.guide and args[1] is spec.centre
    assert args[4].shape == (15,)
    assert type(args[6]) is np.float32 and np.isclose(args[6], 1e-4)
    ints = args[7:]
    assert all(type(v) is np.int32 for v in ints)
    # features, guide (d, h, w), family, has_mask, normalize, channel_wise, kernel (d, h, w),
    # stride, padding, dilation: the order of PAC_DESCRIPTION_PARAMS, a 2-D call lifted to 3-D
    # with a singleton depth axis (size 1, kernel 1, stride 1, padding 0, dilation 1).
    assert tuple(int(v) for v in ints) == (
        3, 1, 5, 6, 2, 1, 3, 0, 1, 3, 5, 1, 1, 2, 0, 1, 0, 1, 1, 1)


@pytest.mark.parametrize("rank", [1, 3])
def test_description_args_lift_other_ranks(rank):
    spatial = (4, 5, 6)[3 - rank:]
    kernel = (3, 1, 5)[3 - rank:]
    spec = types.SimpleNamespace(
        guide=np.zeros((1, 2, *spatial)), centre=np.zeros((1, 2, *spatial)), alpha=np.zeros(1),
        lam=np.zeros(1), spatial=np.ones(kernel), mask=np.zeros((1, *spatial)), eps2=0.0,
        guide_shape=spatial, family=1, has_mask=False, normalize=1, channel_wise=False,
    )
    stride, padding, dilation = (2, 1, 3)[3 - rank:], (1, 0, 2)[3 - rank:], (1, 2, 1)[3 - rank:]
    args = launch.description_args(spec, kernel, stride, padding, dilation, np.float64)
    assert args[4].shape == (int(np.prod(kernel)),)
    ints = tuple(int(v) for v in args[7:])
    if rank == 3:
        assert ints == (2, 4, 5, 6, 1, 0, 1, 0, 3, 1, 5, 2, 1, 3, 1, 0, 2, 1, 2, 1)
    else:
        assert ints == (2, 1, 1, 6, 1, 0, 1, 0, 1, 1, 5, 1, 1, 3, 0, 0, 2, 1, 1, 1)


def test_lift_prepends_singleton_axes():
    assert launch.lift((5, 7), 1) == (1, 5, 7)
    assert launch.lift([9], 0) == (0, 0, 9)
    assert launch.lift((2, 3, 4), 1) == (2, 3, 4)
    assert all(type(v) is int for v in launch.lift((np.int64(3),), 1))
    for bad in ((), (1, 2, 3, 4)):
        with pytest.raises(ValueError, match="1 to 3 spatial values"):
            launch.lift(bad, 1)


def test_lines_counts_every_line_along_the_last_axis():
    assert launch.lines((7,)) == 1
    assert launch.lines((5, 7)) == 5
    assert launch.lines((3, 5, 7)) == 15


def test_description_params_match_the_cuda_macro():
    """The Python packing order is the macro's parameter order."""
    text = _loader.read_text("pac_common.cuh")
    body = text.split("#define PAC_DESCRIPTION_PARAMS(T)", 1)[1].split("\n\n", 1)[0]
    names = [p.replace("\\", " ").split()[-1].lstrip("*")
             for p in body.replace("\\\n", " ").split(",")]
    assert names == ["guide", "centre", "alpha", "lam", "spatial", "mask", "eps2", "features",
                     "guide_d", "guide_h", "guide_w", "family", "has_mask", "normalize",
                     "channel_wise", "kd", "kh", "kw", "ksz", "ksy", "ksx", "kpz", "kpy", "kpx",
                     "dd", "dh", "dw"]


@pytest.mark.parametrize("out_channels, dense, fk_count, expected", [
    (3, False, 1, 3), (3, False, 3, 1), (9, True, 1, 4), (9, True, 3, 4), (2, True, 2, 2),
])
def test_direct_group(out_channels, dense, fk_count, expected):
    assert launch.direct_group(out_channels, dense, fk_count) == expected


def test_direct_conv_threshold_is_read_at_call_time(monkeypatch):
    assert launch.use_direct_conv(4, 16)
    monkeypatch.setattr(launch, "DIRECT_CONV_MAX_CHANNEL_PRODUCT", 63)
    assert not launch.use_direct_conv(4, 16)


def _covered(chunks, batch, out_h):
    seen = np.zeros((batch, out_h), int)
    for c in chunks:
        seen[c.n0:c.n0 + c.images, c.row_start:c.row_start + c.rows] += 1
    return seen


@pytest.mark.parametrize("batch, out_h, out_w, rows, itemsize, workspace", [
    (5, 7, 9, 27, 4, 10**9),         # everything in one chunk
    (5, 7, 9, 27, 4, 2 * 27 * 63 * 4),  # two images per chunk, last partial
    (3, 7, 9, 27, 8, 27 * 9 * 8 * 3),   # bands of three rows, last partial
    (2, 7, 9, 27, 8, 1),             # smaller than a row: one row per chunk
    (1, 1, 1, 1, 4, 4),
])
def test_conv_chunks_partition_the_output_within_the_workspace(batch, out_h, out_w, rows,
                                                               itemsize, workspace):
    chunks = launch.conv_chunks(batch, out_h, out_w, rows, itemsize, workspace)
    assert (_covered(chunks, batch, out_h) == 1).all()
    for c in chunks:
        assert c.images == 1 or c.rows == out_h
        nbytes = c.images * rows * c.rows * out_w * itemsize
        assert nbytes <= max(workspace, rows * out_w * itemsize)


def test_conv_chunks_uses_the_module_workspace(monkeypatch):
    monkeypatch.setattr(launch, "WORKSPACE_BYTES", 27 * 9 * 4)
    chunks = launch.conv_chunks(2, 5, 9, 27, 4)
    assert len(chunks) == 10 and all(c.rows == 1 for c in chunks)
    assert len(launch.conv_chunks(2, 5, 9, 27, 4, 10**9)) == 1


def test_loader_name_expressions_cover_both_types_and_index_widths():
    expressions = _loader.name_expressions("pac_forward.cu")
    assert "pac_direct<float, int>" in expressions
    assert "pac_patches<double, long long>" in expressions
    assert len(expressions) == len(set(expressions)) == 4 * len(_loader.KERNELS["pac_forward.cu"])
    assert _loader.kernel_file("pac_patches") == "pac_forward.cu"
    with pytest.raises(KeyError, match="no CUDA source"):
        _loader.kernel_file("nonexistent")


def test_loader_expands_each_header_once():
    text = _loader.source("pac_forward.cu")
    assert text.count("namespace pac {") == 1
    assert "template <typename T, typename I>\n__global__ void pac_fill(" in text


def test_importing_the_backend_does_not_import_cupy():
    import subprocess
    import sys

    code = ("import sys, pacarray, pacarray._cuda, pacarray._cuda.launch; "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
