"""Sampling points of the dense head, one per feature-map cell, cached per (sizes, strides, device)."""

from __future__ import annotations

import torch
from torch import Tensor

_CACHE: dict[tuple, tuple[Tensor, Tensor]] = {}
_CACHE_LIMIT = 64  # distinct (sizes, device) keys; eval with varied image sizes must not grow without bound


def level_points(
    feature_sizes: list[tuple[int, int]], strides: list[int], device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Centres of every cell of every level, flattened level by level, row-major.

    Args:
        feature_sizes: ``(H_l, W_l)`` per level.
        strides: stride of each level in input pixels.
        device: where the result lives.

    Returns:
        points_xy: ``(P, 2)`` float32 cell centres ``((j + 0.5) * s, (i + 0.5) * s)`` in input pixels.
        point_strides: ``(P,)`` float32 stride of the level each point belongs to.
    """
    key = (tuple(map(tuple, feature_sizes)), tuple(strides), str(device))
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    points, point_strides = [], []
    for (h, w), s in zip(feature_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))  # (H*W, 2)
        point_strides.append(torch.full((h * w,), float(s), device=device))
    result = (torch.cat(points), torch.cat(point_strides))
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[key] = result
    return result


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per-level ``(B, C, H_l, W_l)`` -> ``(B, P, C)`` in the point order of :func:`level_points`."""
    return torch.cat([m.flatten(2) for m in maps], dim=2).transpose(1, 2)  # (B, P, C)
