"""The sparse NMS keeps exactly what torchvision's NMS keeps, and finds every pair that can suppress."""

import pytest
import torch
from torchvision.ops import batched_nms, box_iou, nms

from tod_lightning.ops.nms import _candidate_pairs, _runs, sparse_batched_nms


def _scene(n: int, size: float, seed: int, big: int = 0, integer: bool = False, tied: bool = False):
    """``n`` boxes as duplicates (5 jittered copies) of tiny objects, a few big ones, in 8 groups."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n // 5, 2, generator=g) * size
    wh = 2 + 14 * torch.rand(n // 5, 2, generator=g)
    wh[:big] = 40 + 80 * torch.rand(big, 2, generator=g)
    jitter = torch.randn(n // 5, 5, 4, generator=g) * (0.3 + seed % 3 * 0.5)
    boxes = (torch.cat([centers - wh / 2, centers + wh / 2], 1)[:, None] + jitter).reshape(-1, 4).clamp(min=0)
    if integer:
        boxes = boxes.round()
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    scores = torch.rand(len(boxes), generator=g)
    if tied:
        scores = (scores * 20).round() / 20
    groups = torch.randint(0, 8, (len(boxes),), generator=g)
    return boxes, scores, groups


def _reference(boxes, scores, groups, threshold):
    """torchvision's NMS group by group (the kernel batched_nms runs for large inputs)."""
    keep = []
    for k in torch.unique(groups):
        idx = (groups == k).nonzero().squeeze(1)
        keep.append(idx[nms(boxes[idx], scores[idx], threshold)])
    return torch.cat(keep)


@pytest.mark.parametrize(
    "n,size,threshold,big,integer,tied",
    [
        (1500, 256, 0.6, 0, False, False),
        (3000, 512, 0.5, 5, False, False),
        (9000, 800, 0.6, 20, False, False),
        (3000, 300, 0.3, 0, True, False),  # integer coordinates: exact IoU ties with the threshold
        (3000, 400, 0.7, 5, False, True),  # tied scores
        (2000, 200, 0.1, 3, False, False),  # a low threshold: partners up to 4 size buckets apart
    ],
)
def test_same_boxes_kept_as_torchvision(n, size, threshold, big, integer, tied):
    boxes, scores, groups = _scene(n, size, seed=n + int(10 * threshold), big=big, integer=integer, tied=tied)
    ref = _reference(boxes, scores, groups, threshold)
    out = sparse_batched_nms(boxes, scores, groups, threshold)
    assert set(out.tolist()) == set(ref.tolist())
    assert len(out) == len(ref) < len(boxes)  # duplicates were removed
    assert (scores[out][1:] <= scores[out][:-1]).all()  # decreasing score, as torchvision returns them


@pytest.mark.parametrize(
    "big,threshold,one_bucket",
    [
        (10, 0.5, False),  # several size levels: boxes of lower buckets search all 9 cells of the level above
        (300, 0.5, False),  # mostly large boxes: fewer lower-bucket boxes than level boxes
        (0, 0.6, True),  # one level: only its own pairs (own cell's followers and the 4 cells after it)
        (0, 0.3, False),
    ],
)
def test_every_suppressing_pair_is_a_candidate_pair_once(big, threshold, one_bucket):
    boxes, _, groups = _scene(2000, 300, seed=3, big=big)
    if one_bucket:  # every longest side in (8, 16]: a single size bucket
        centers, wh = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).clamp(8.5, 16)
        boxes = torch.cat([centers - wh / 2, centers + wh / 2], 1)
    first, second = _candidate_pairs(boxes, groups, threshold)
    pairs = set(zip(first.tolist(), second.tolist()))
    assert len(pairs) == len(first)  # no pair twice
    assert not any((b, a) in pairs for a, b in pairs)  # nor in both orders
    iou = box_iou(boxes, boxes)
    same = groups[:, None] == groups[None, :]
    a, b = ((iou > threshold) & same).triu(diagonal=1).nonzero().T
    assert len(a) > 100
    assert all((i, j) in pairs or (j, i) in pairs for i, j in zip(a.tolist(), b.tolist()))


@pytest.mark.parametrize("low,high", [(14.0, 16.8), (14.5, 17.5)])
def test_pairs_across_size_buckets_are_found_once(low, high):
    """Objects of sides around 16 px (the border of two size buckets) with jittered duplicates in one group each:
    many suppressing pairs join a box of one bucket to a box of the next (the lower bucket searches the 9 cells
    around its boxes in the upper one's table), with fewer (42 %) or more (62 %) boxes in the upper bucket."""
    g = torch.Generator().manual_seed(7)
    centers = torch.rand(600, 2, generator=g) * 400
    side = low + (high - low) * torch.rand(600, 1, generator=g)
    boxes = torch.cat([centers - side / 2, centers + side / 2], 1)[:, None] + torch.randn(600, 5, 4, generator=g) * 0.4
    boxes = boxes.reshape(-1, 4)
    groups = torch.arange(600).repeat_interleave(5) % 3  # the duplicates of an object share its group
    longest = (boxes[:, 2:] - boxes[:, :2]).max(1).values
    upper = longest > 16
    assert 0.25 < upper.float().mean() < 0.75  # two levels: neither bucket joins the other
    first, second = _candidate_pairs(boxes, groups, 0.5)
    pairs = set(zip(first.tolist(), second.tolist()))
    assert len(pairs) == len(first) and not any((b, a) in pairs for a, b in pairs)
    a, b = ((box_iou(boxes, boxes) > 0.5) & (groups[:, None] == groups[None, :])).triu(diagonal=1).nonzero().T
    across = upper[a] != upper[b]
    assert int(across.sum()) > 300
    assert all((i, j) in pairs or (j, i) in pairs for i, j in zip(a.tolist(), b.tolist()))


def test_runs_lists_every_slot_of_every_run():
    g = torch.Generator().manual_seed(0)
    count = torch.randint(0, 4, (500,), generator=g) * (torch.rand(500, generator=g) < 0.5)  # many empty runs
    start = torch.randint(0, 10_000, (500,), generator=g)
    entry, run, slot = _runs(start, count)
    owner = torch.repeat_interleave(torch.arange(500), count)  # the reference: run after run
    assert torch.equal(entry.index_select(0, run), owner)
    offset = torch.arange(len(owner)) - (torch.cumsum(count, 0) - count).index_select(0, owner)
    assert torch.equal(slot, start.index_select(0, owner) + offset)
    none = _runs(start, torch.zeros_like(count))
    assert all(t.numel() == 0 for t in none)


def test_small_inputs_and_low_thresholds_use_torchvision():
    boxes, scores, groups = _scene(500, 200, seed=1)
    assert torch.equal(sparse_batched_nms(boxes, scores, groups, 0.6), batched_nms(boxes, scores, groups, 0.6))
    boxes, scores, groups = _scene(1500, 200, seed=2)
    assert torch.equal(sparse_batched_nms(boxes, scores, groups, 0.0), batched_nms(boxes, scores, groups, 0.0))
    empty = torch.zeros(0, 4)
    assert sparse_batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6).numel() == 0


def test_dispatch_takes_the_sparse_path_only_for_large_groups(monkeypatch):
    import tod_lightning.ops.nms as module

    calls = []
    monkeypatch.setattr(module, "sparse_batched_nms", lambda *a: calls.append(len(a[0])) or module.batched_nms(*a))
    boxes, scores, groups = _scene(5000, 600, seed=5)
    module.class_aware_nms(boxes, scores, torch.arange(5000) % 32, 0.6)  # 32 groups of ~150: torchvision's kernel
    assert calls == []
    module.class_aware_nms(boxes[:900], scores[:900], torch.zeros(900, dtype=torch.long), 0.6)  # under 1000 boxes
    assert calls == []
    module.class_aware_nms(boxes, scores, torch.zeros_like(groups), 0.6)  # one group of 5000: sparse
    assert calls == [5000]
    kept = module.class_aware_nms(boxes, scores, torch.zeros_like(groups), 0.6)
    assert set(kept.tolist()) == set(sparse_batched_nms(boxes, scores, torch.zeros_like(groups), 0.6).tolist())


def test_sparse_group_ids_and_a_huge_canvas():
    """Group ids far apart (renumbered) and boxes scattered over a 10^6-px canvas (coarser cells for a sparse size
    bucket, so the cell table stays small): the same kept set as torchvision."""
    boxes, scores, groups = _scene(3000, 300, seed=11, big=5)
    far = torch.zeros(len(boxes), 2)
    far[::7] = torch.rand(len(boxes[::7]), 2, generator=torch.Generator().manual_seed(0)) * 1e6  # scattered
    boxes = boxes + far.repeat(1, 2)
    groups = groups * 1_000_003 + 17
    ref = _reference(boxes, scores, groups, 0.6)
    out = sparse_batched_nms(boxes, scores, groups, 0.6)
    assert set(out.tolist()) == set(ref.tolist()) and len(out) < len(boxes)


def test_non_finite_boxes_fall_back_to_torchvision():
    boxes, scores, groups = _scene(3000, 300, seed=12)
    boxes[5] = float("nan")
    boxes[9, 2] = float("inf")
    assert torch.equal(sparse_batched_nms(boxes, scores, groups, 0.6), batched_nms(boxes, scores, groups, 0.6))
