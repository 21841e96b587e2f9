"""The compiled window search returns the torch path's indices, bit for bit, wherever the centres lie."""

import math

import pytest
import torch

import tod_lightning.ops.window_nearest as module
from tod_lightning.ops.points import level_points
from tod_lightning.ops.window_nearest import window_nearest_points


def _half(topk: int) -> int:
    """The window ATSSAssigner._candidates picks for ``topk``."""
    a = math.ceil((math.sqrt(topk) - 1) / 2)
    return math.floor(math.sqrt(2) * (a + 0.5) - 0.5) + 1


def _levels(shapes, strides):
    points_xy, point_strides = level_points(shapes, strides, "cpu")
    starts = [sum(h * w for h, w in shapes[:i]) for i in range(len(shapes))]
    return point_strides[torch.tensor(starts)], starts, points_xy


@pytest.mark.parametrize("topk", [1, 2, 4, 9, 12, 16, 25])
def test_kernel_equals_the_torch_path(topk):
    """Centres on a quarter-cell lattice (exact ties between window points everywhere), random ones, ones beyond
    every edge (the window shifted inside the grid) and on odd grid shapes: the same indices in the same order."""
    side = 2 * _half(topk) + 1  # the window: the smallest grid it fits
    shapes = [(max(side, 13), max(side, 10)), (max(side, 7), max(side, 5)), (side, side + 2)]
    strides = [4, 8, 16]
    level_strides, starts, _ = _levels(shapes, strides)
    height, width = shapes[0][0] * 4, shapes[0][1] * 4
    xs, ys = torch.arange(-8, width + 8.01, 0.25), torch.arange(-8, height + 8.01, 0.25)
    lattice = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    g = torch.Generator().manual_seed(topk)
    random = torch.rand(3000, 2, generator=g) * torch.tensor([width + 40.0, height + 40.0]) - 20
    centers = torch.cat([lattice, random])
    args = (level_strides, shapes, starts, _half(topk), topk)
    got = window_nearest_points(centers, *args)
    expected = module._nearest_torch(centers, *args)
    assert got.shape == (3, len(centers), topk) and got.dtype == torch.int64
    assert torch.equal(got, expected)


def test_nearest_points_are_nearest():
    """Against a brute-force search over every point of the level (distance, then index)."""
    shapes, strides = [(20, 30)], [8]
    level_strides, starts, points_xy = _levels(shapes, strides)
    centers = torch.rand(500, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([240.0, 160.0])
    got = window_nearest_points(centers, level_strides, shapes, starts, 2, 9)[0]  # (G, 9)
    dist2 = ((points_xy[None] - centers[:, None]) ** 2).sum(-1)  # (G, P)
    expected = torch.sort(dist2, dim=1, stable=True).indices[:, :9]
    assert torch.equal(got, expected)


def test_other_dtypes_and_absurd_centres_take_the_torch_path(monkeypatch):
    calls = []
    monkeypatch.setattr(module, "_nearest_in_windows", lambda *a: calls.append(1))
    shapes, strides = [(9, 9)], [4]
    level_strides, starts, _ = _levels(shapes, strides)
    centers = torch.rand(10, 2) * 36
    for c, s in [
        (centers.double(), level_strides.double()),
        (torch.cat([centers, torch.tensor([[float("nan"), 3.0]])]), level_strides),
        (torch.cat([centers, torch.tensor([[1e30, 3.0]])]), level_strides),
    ]:
        out = window_nearest_points(c, s, shapes, starts, 2, 9)
        assert out.shape == (1, len(c), 9)
    assert calls == []
    window_nearest_points(centers, level_strides, shapes, starts, 2, 9)
    assert calls == [1]
