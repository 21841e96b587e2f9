"""Stable orders from unstable sorts equal torch's stable sort, ties and signed zeros included; numpy's nonzero
equals torch's."""

import numpy as np
import pytest
import torch

from tod_lightning.ops.ordering import (
    argsort_small_ints,
    first_in_order,
    float_ordinal,
    index_rows,
    nonzero_1d,
    stable_descending_order,
)


def _tied_values(shape, seed):
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(shape, generator=g) * 4).round() / 4  # many exact ties
    values[values == 0] = -0.0 * torch.ones(1)  # some negative zeros among the zeros
    values.view(-1)[::7] = 0.0
    return values


def test_float_ordinal_is_monotone_and_merges_signed_zeros():
    values = torch.tensor([-float("inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    ordinal = float_ordinal(values)
    assert (ordinal[1:] >= ordinal[:-1]).all()
    assert ordinal[3] == ordinal[4]  # -0.0 == 0.0
    assert (ordinal[1:3] < ordinal[3]).all() and (ordinal[5:] > ordinal[4]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_stable_descending_order_equals_a_stable_sort(seed):
    values = _tied_values((5000,), seed)
    expected = torch.sort(values, descending=True, stable=True).indices
    assert torch.equal(stable_descending_order(values), expected)
    assert torch.equal(stable_descending_order(values.requires_grad_()), expected)  # scores may carry a graph


@pytest.mark.parametrize("k", [1, 9, 25])
@pytest.mark.parametrize("descending", [False, True])
def test_first_in_order_equals_a_stable_sort(k, descending):
    values = _tied_values((300, 25), seed=k)
    expected = values.sort(dim=1, stable=True, descending=descending).indices[:, :k]
    assert torch.equal(first_in_order(values, k, descending=descending), expected)
    squared = values.abs() + 0.0  # >= 0, no -0.0: the nonnegative shortcut
    expected = squared.sort(dim=1, stable=True, descending=descending).indices[:, :k]
    assert torch.equal(first_in_order(squared, k, descending=descending, nonnegative=True), expected)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_nonzero_1d_equals_torch_nonzero(density):
    mask = torch.rand(10_000, generator=torch.Generator().manual_seed(3)) < density
    expected = mask.nonzero().squeeze(1)
    got = nonzero_1d(mask)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert torch.equal(nonzero_1d(mask[::3]), mask[::3].nonzero().squeeze(1))  # a strided view


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 64, 1001, 100_003])
def test_nonzero_1d_at_every_length_and_alignment(length):
    """The CPU scan (8-byte words, then the bytes after the last whole word) at lengths around the word size,
    densities from none to all, and views starting off an 8-byte boundary (numpy's path)."""
    g = torch.Generator().manual_seed(length)
    for density in (0.0, 0.002, 0.06, 0.5, 1.0):
        mask = torch.rand(length, generator=g) < density
        mask[-1:] = density > 0  # the last entry decides the write one past the end
        assert torch.equal(nonzero_1d(mask), mask.nonzero().squeeze(1)), density
        for start in (1, 3):
            assert torch.equal(nonzero_1d(mask[start:]), mask[start:].nonzero().squeeze(1))
        counts = mask.to(torch.int64) * 3  # not a bool mask: numpy's path, the same positions
        assert torch.equal(nonzero_1d(counts), mask.nonzero().squeeze(1))


def test_argsort_small_ints_is_a_stable_sort():
    keys = torch.randint(0, 40, (20_000,), generator=torch.Generator().manual_seed(5))
    order = argsort_small_ints(keys)
    assert order.dtype == torch.int64 and torch.equal(order, torch.sort(keys, stable=True).indices)


@pytest.mark.parametrize(
    "values",
    [
        torch.rand(500, 4),  # boxes: 16-byte rows, one complex128 each
        torch.rand(500, 2),  # points: 8-byte rows, one int64 each
        torch.randint(-9, 9, (500, 2), dtype=torch.int32),
        torch.rand(500, 4).half(),
        torch.rand(500, 3),  # 12-byte rows: index_select
        torch.rand(4, 500).T,  # not contiguous: index_select
    ],
    ids=["f32x4", "f32x2", "i32x2", "f16x4", "f32x3", "strided"],
)
def test_index_rows_equals_index_select(values):
    index = torch.randint(0, len(values), (1200,), generator=torch.Generator().manual_seed(7))
    got = index_rows(values, index)
    assert got.dtype == values.dtype and torch.equal(got, values.index_select(0, index))
    assert index_rows(values, index[:0]).shape == (0, values.shape[1])


def test_index_rows_of_no_rows_with_any_strides():
    """An empty tensor is contiguous whatever its strides; ``torch.from_numpy`` gives ``(0, 4)`` strides ``(0, 0)``,
    which the wide-dtype view refuses."""
    empty = torch.from_numpy(np.empty((0, 4), dtype=np.float32))
    assert index_rows(empty, torch.zeros(0, dtype=torch.int64)).shape == (0, 4)


def test_index_rows_keeps_autograd():
    values = torch.rand(50, 4, requires_grad=True)
    index = torch.tensor([3, 3, 7])
    index_rows(values, index).sum().backward()  # the wide-dtype view would cut the graph
    assert values.grad[3].tolist() == [2.0] * 4 and values.grad[7].tolist() == [1.0] * 4
    assert values.grad.sum() == 12
