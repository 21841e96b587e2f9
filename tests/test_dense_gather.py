"""The compiled gather of selected head-map entries equals the torch gathers it replaces, bit for bit."""

from __future__ import annotations

import pytest
import torch

from tod_lightning.ops import dense_gather
from tod_lightning.ops.dense_gather import gather_dense_entries


def _maps(batch, classes, shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda c: [torch.randn(batch, c, h, w, generator=g).to(dtype) for h, w in shapes]  # noqa: E731
    return make(classes), make(1), make(4)


@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_compiled_gather_equals_torch_gather(order):
    """Odd level shapes, several images and classes, an empty level, entries at the first and last position of
    every (image, class) block, in ``nonzero``'s ascending order and shuffled."""
    batch, classes, shapes = 3, 5, [(13, 7), (7, 4), (1, 1), (4, 2)]
    cls_maps, quality_maps, box_maps = _maps(batch, classes, shapes)
    g = torch.Generator().manual_seed(1)
    entries = []
    for level, (h, w) in enumerate(shapes):
        size = batch * classes * h * w
        blocks = torch.arange(0, size, h * w)
        chosen = torch.cat([blocks, blocks + h * w - 1, torch.randint(0, size, (size // 3,), generator=g)])
        entry = torch.unique(chosen) if level != 2 else torch.zeros(0, dtype=torch.int64)  # level 2: none
        if order == "shuffled":
            entry = entry[torch.randperm(len(entry), generator=g)]
        entries.append(entry)
    got = dense_gather._gather_compiled(entries, cls_maps, quality_maps, box_maps)
    want = dense_gather._gather_torch(entries, cls_maps, quality_maps, box_maps)
    assert len(got[0]) == sum(len(e) for e in entries) > 100
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    # and against the definition, entry by entry on the first level
    image, label, point, cls_logit, quality_logit, deltas = got
    h, w = shapes[0]
    for k, e in enumerate(entries[0].tolist()[:50]):
        b, c, y, x = e // (classes * h * w), e // (h * w) % classes, e % (h * w) // w, e % w
        assert (image[k], label[k], point[k]) == (b, c, y * w + x)
        assert cls_logit[k] == cls_maps[0][b, c, y, x] and quality_logit[k] == quality_maps[0][b, 0, y, x]
        assert torch.equal(deltas[k], box_maps[0][b, :, y, x])


def test_gather_of_strided_maps_and_no_entries():
    """Maps that are views with strides (a channel slice) are read as their values, not their storage."""
    cls_maps, quality_maps, box_maps = _maps(2, 6, [(5, 3)])
    cls_view = [m[:, 1:4] for m in cls_maps]  # (2, 3, 5, 3), not contiguous
    entries = [torch.arange(0, 2 * 3 * 15, 4)]
    got = gather_dense_entries(entries, cls_view, quality_maps, box_maps)
    want = dense_gather._gather_torch(entries, cls_view, quality_maps, box_maps)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    empty = gather_dense_entries([torch.zeros(0, dtype=torch.int64)], cls_maps, quality_maps, box_maps)
    assert [tuple(t.shape) for t in empty] == [(0,)] * 5 + [(0, 4)]


def test_gather_dispatch(monkeypatch):
    """float32 CPU maps take the kernel; other dtypes (bf16/fp16 from AMP, float64) the torch gathers."""
    calls = []
    monkeypatch.setattr(dense_gather, "_gather_level", lambda *a: calls.append(a))
    entries = [torch.arange(3)]
    gather_dense_entries(entries, *_maps(1, 2, [(2, 2)]))
    assert len(calls) == 1
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        out = gather_dense_entries(entries, *_maps(1, 2, [(2, 2)], dtype=dtype))
        assert out[3].dtype == dtype and len(calls) == 1
