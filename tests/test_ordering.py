"""Stable orders from unstable sorts equal torch's stable sort, ties and signed zeros included; numpy's nonzero
equals torch's."""

import pytest
import torch

from tod_lightning.ops.ordering import (
    argsort_small_ints,
    argsort_unstable,
    first_in_order,
    float_ordinal,
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


@pytest.mark.parametrize("k", [1, 9, 25])
@pytest.mark.parametrize("descending", [False, True])
def test_first_in_order_equals_a_stable_sort(k, descending):
    values = _tied_values((300, 25), seed=k)
    expected = values.sort(dim=1, stable=True, descending=descending).indices[:, :k]
    assert torch.equal(first_in_order(values, k, descending=descending), expected)
    squared = values.abs() + 0.0  # >= 0, no -0.0: the nonnegative shortcut
    expected = squared.sort(dim=1, stable=True, descending=descending).indices[:, :k]
    assert torch.equal(first_in_order(squared, k, descending=descending, nonnegative=True), expected)


def test_argsort_unstable_sorts():
    keys = torch.randperm(10000) * 3 - 5000
    order = argsort_unstable(keys)
    assert order.dtype == torch.int64 and torch.equal(keys[order], torch.sort(keys).values)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_nonzero_1d_equals_torch_nonzero(density):
    mask = torch.rand(10_000, generator=torch.Generator().manual_seed(3)) < density
    expected = mask.nonzero().squeeze(1)
    got = nonzero_1d(mask)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert torch.equal(nonzero_1d(mask[::3]), mask[::3].nonzero().squeeze(1))  # a strided view


def test_argsort_small_ints_is_a_stable_sort():
    keys = torch.randint(0, 40, (20_000,), generator=torch.Generator().manual_seed(5))
    order = argsort_small_ints(keys)
    assert order.dtype == torch.int64 and torch.equal(order, torch.sort(keys, stable=True).indices)
