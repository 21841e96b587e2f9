"""ATSS assigner: every ground truth gets a positive, ignore regions, injectable similarity."""

import pytest
import torch

from tod_lightning.assigners import IGNORE, NEGATIVE, ATSSAssigner, IoUSimilarity, NWDSimilarity
from tod_lightning.assigners.atss import mean_plus_std
from tod_lightning.ops import level_points

STRIDES = [4, 8, 16, 32]
H = W = 256


def _points():
    sizes = [(H // s, W // s) for s in STRIDES]
    points_xy, point_strides = level_points(sizes, STRIDES, "cpu")
    return points_xy, point_strides, [h * w for h, w in sizes]


def _random_boxes(n: int, lo: float, hi: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    wh = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    xy = torch.rand(n, 2, generator=g) * (W - wh)
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("similarity", [IoUSimilarity(), NWDSimilarity()])
@pytest.mark.parametrize("lo,hi", [(2.0, 3.0), (2.0, 32.0), (8.0, 64.0)])
def test_every_ground_truth_gets_a_positive(similarity, lo, hi):
    points_xy, point_strides, counts = _points()
    gt = _random_boxes(300, lo, hi, seed=int(lo * 10 + hi))
    result = ATSSAssigner(similarity=similarity)(points_xy, point_strides, counts, gt)
    matched = torch.zeros(len(gt), dtype=torch.bool)
    matched[result.gt_index[result.gt_index >= 0]] = True
    assert matched.all(), f"{(~matched).sum()} of {len(gt)} boxes have no positive"


def test_two_pixel_boxes_between_grid_points():
    """A 2x2 box at every sub-cell offset of the stride-4 grid, including ones containing no point."""
    points_xy, point_strides, counts = _points()
    offsets = torch.arange(0, 4, 0.5)
    xy = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
    i = torch.arange(len(xy))
    xy = xy + torch.stack([i % 8, i // 8], 1) * 30.0  # spread over the image so they do not compete
    gt = torch.cat([xy, xy + 2.0], dim=1)
    result = ATSSAssigner()(points_xy, point_strides, counts, gt)
    assert set(result.gt_index[result.gt_index >= 0].tolist()) == set(range(len(gt)))


def test_two_boxes_competing_for_the_same_point_both_get_one():
    points_xy, point_strides, counts = _points()
    gt = torch.tensor([[100.5, 100.5, 102.5, 102.5], [101.0, 101.0, 103.0, 103.0]])  # same nearest point
    result = ATSSAssigner()(points_xy, point_strides, counts, gt)
    assert set(result.gt_index[result.gt_index >= 0].tolist()) == {0, 1}


def test_large_box_positives_lie_inside_it():
    points_xy, point_strides, counts = _points()
    gt = torch.tensor([[40.0, 60.0, 140.0, 180.0]])
    result = ATSSAssigner()(points_xy, point_strides, counts, gt)
    pos = result.gt_index == 0
    assert pos.sum() >= 1
    p = points_xy[pos]
    assert ((p[:, 0] > 40) & (p[:, 0] < 140) & (p[:, 1] > 60) & (p[:, 1] < 180)).all()
    assert (result.similarity[pos] > 0).all()


def test_no_ground_truth_means_all_negative():
    points_xy, point_strides, counts = _points()
    result = ATSSAssigner()(points_xy, point_strides, counts, torch.zeros(0, 4))
    assert (result.gt_index == NEGATIVE).all()


def test_ignore_regions_remove_negatives_only():
    points_xy, point_strides, counts = _points()
    gt = torch.tensor([[20.0, 20.0, 28.0, 28.0]])
    ignore = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    result = ATSSAssigner()(points_xy, point_strides, counts, gt, ignore)
    assert (result.gt_index == 0).any(), "positives inside an ignore region stay positive"
    p2 = point_strides == 4
    inside = (points_xy[:, 0] < 60) & (points_xy[:, 1] < 60) & p2 & (result.gt_index != 0)
    assert (result.gt_index[inside] == IGNORE).all()
    outside = (points_xy[:, 0] > 100) | (points_xy[:, 1] > 100)
    assert (result.gt_index[outside] == NEGATIVE).all()


def test_similarity_is_injected():
    points_xy, point_strides, counts = _points()
    gt = _random_boxes(50, 2.0, 12.0, seed=3)
    a = ATSSAssigner(similarity=IoUSimilarity())(points_xy, point_strides, counts, gt).gt_index
    b = ATSSAssigner(similarity=NWDSimilarity())(points_xy, point_strides, counts, gt).gt_index
    assert not torch.equal(a, b)


def test_nwd_reference_values():
    """methods.md §6: NWD(b, b) ~ 1, symmetric, > 0 when disjoint, 1-px shift = exp(-1/12.8)."""
    nwd = NWDSimilarity(constant=12.8)
    b = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    shifted = b + torch.tensor([1.0, 0.0, 1.0, 0.0])
    far = b + 100
    assert nwd(b, b).item() == pytest.approx(1.0, abs=1e-3)
    assert nwd(b, shifted).item() == pytest.approx(torch.exp(torch.tensor(-1 / 12.8)).item(), abs=1e-3)
    assert nwd(b, shifted).item() == pytest.approx(nwd(shifted, b).item())
    assert nwd(b, far).item() > 0
    assert IoUSimilarity()(b, far).item() == 0


@pytest.mark.parametrize("similarity", [IoUSimilarity(), NWDSimilarity()])
def test_paired_similarity_is_the_dense_one_bit_for_bit(similarity):
    """``paired`` (the windowed assigner's) gives exactly the matching entries of ``__call__`` (the dense one's),
    with broadcasting over candidates and component-major layouts."""
    g = torch.Generator().manual_seed(0)
    a = torch.cat([xy := torch.rand(1200, 2, generator=g) * 50, xy + 1 + 20 * torch.rand(1200, 2, generator=g)], 1)
    b = torch.cat([xy := torch.rand(40, 2, generator=g) * 50, xy + 1 + 20 * torch.rand(40, 2, generator=g)], 1)
    b[:10] = a[:10].round()  # some identical and integer boxes
    dense = similarity(a, b)  # (1200, 40)
    pairs = a.view(40, 30, 4)  # row g pairs b[g] with a[30 g : 30 g + 30]
    component_major = pairs.permute(2, 0, 1).contiguous().permute(1, 2, 0)  # (40, 30, 4), coordinates contiguous
    want = torch.stack([dense[30 * i : 30 * i + 30, i] for i in range(40)])  # (40, 30)
    for layout in (pairs, component_major):
        assert torch.equal(similarity.paired(layout, b[:, None, :]), want)


def _reference_assign(assigner, points_xy, point_strides, counts, gt):
    """The per-round algorithm the assigner had before it was vectorised: dense (P, G) similarity and distances,
    a Python round per candidate rank with ``nonzero`` and ``unique``; with the tie-breaks now defined (nearest
    candidates by (distance, index), stable ranking, most similar box by lowest index)."""
    num_points, num_gt = points_xy.shape[0], gt.shape[0]
    priors = assigner.priors(points_xy, point_strides)
    gt_index = torch.full((num_points,), NEGATIVE, dtype=torch.long)
    best_sim = torch.zeros(num_points)
    sim = assigner.similarity(priors, gt)  # (P, G)
    centers = (gt[:, :2] + gt[:, 2:]) / 2
    dist2 = ((points_xy[:, None] - centers[None]) ** 2).sum(-1)  # (P, G)
    cands, start = [], 0
    for size in counts:
        cands.append(dist2[start : start + size].sort(dim=0, stable=True).indices[: min(assigner.topk, size)] + start)
        start += size
    cand_idx = torch.cat(cands)
    cand_sim = sim.gather(0, cand_idx)
    threshold = mean_plus_std(cand_sim.T)  # the assigner's own formula (float rounding included)
    x, y = points_xy[:, 0:1], points_xy[:, 1:2]
    inside = ((x > gt[:, 0]) & (x < gt[:, 2]) & (y > gt[:, 1]) & (y < gt[:, 3])).gather(0, cand_idx)
    is_pos = (cand_sim >= threshold) & inside
    for c, g in zip(*is_pos.nonzero(as_tuple=True)):
        p = cand_idx[c, g]
        if cand_sim[c, g] > best_sim[p] or gt_index[p] < 0 or (cand_sim[c, g] == best_sim[p] and g < gt_index[p]):
            gt_index[p], best_sim[p] = g, cand_sim[c, g]
    order = cand_sim.argsort(dim=0, descending=True, stable=True)
    ranked, ranked_sim = cand_idx.gather(0, order), cand_sim.gather(0, order)
    forced = torch.zeros(num_points, dtype=torch.bool)
    for rank in range(ranked.shape[0]):
        has_pos = torch.zeros(num_gt, dtype=torch.bool)
        has_pos[gt_index[gt_index >= 0]] = True
        taken = set()
        for g in (~has_pos).nonzero().squeeze(1).tolist():
            p = int(ranked[rank, g])
            if not forced[p] and p not in taken:
                taken.add(p)
                gt_index[p], best_sim[p] = g, ranked_sim[rank, g]
        for p in taken:
            forced[p] = True
    return gt_index, best_sim


@pytest.mark.parametrize("similarity", [IoUSimilarity(), NWDSimilarity()])
@pytest.mark.parametrize("case", range(6))
def test_vectorised_assigner_equals_reference(similarity, case):
    """Windowed candidates + sync-free forced rounds give bit-identical results to the per-round reference,
    with float and integer (tie-rich) coordinates and duplicated boxes."""
    g = torch.Generator().manual_seed(case)
    size = [64, 96, 128][case % 3]
    sizes = [(size // s, size // s) for s in (4, 8, 16)]
    points_xy, point_strides = level_points(sizes, [4, 8, 16], "cpu")
    counts = [h * w for h, w in sizes]
    n = [1, 7, 40, 120, 200, 60][case]
    wh = 2 + 14 * torch.rand(n, 2, generator=g)
    gt = torch.cat([xy := torch.rand(n, 2, generator=g) * (size - wh), xy + wh], dim=1)
    if case % 2:
        gt = gt.round()
    if n >= 8:
        gt[: n // 4] = gt[n // 4 : 2 * (n // 4)]
    ref_index, ref_sim = _reference_assign(ATSSAssigner(similarity), points_xy, point_strides, counts, gt)
    for sync_free in (False, True):  # the CPU schedule and the accelerator one
        assigner = ATSSAssigner(similarity, sync_free=sync_free)
        for shapes in (sizes, None):
            result = assigner(points_xy, point_strides, counts, gt, level_shapes=shapes)
            assert torch.equal(result.gt_index, ref_index)
            assert torch.equal(result.similarity, ref_sim)


@pytest.mark.parametrize("topk", [1, 2, 4, 9, 12, 16, 25])
@pytest.mark.parametrize("sizes,strides", [([(10, 13), (5, 7)], [4, 8]), ([(9, 11), (5, 6), (3, 3)], [4, 8, 16])])
def test_window_search_equals_dense_search_at_every_sub_cell_offset(topk, sizes, strides):
    """The windowed candidate search returns exactly the dense search's candidates, in order, for box centres on a
    sixteenth-of-a-cell lattice over the whole image (exact ties everywhere, the edges and corners included) and
    at random positions."""
    points_xy, point_strides = level_points(sizes, strides, "cpu")
    counts = [h * w for h, w in sizes]
    height, width = sizes[0][0] * strides[0], sizes[0][1] * strides[0]
    xs, ys = torch.arange(0, width + 0.01, 0.25), torch.arange(0, height + 0.01, 0.25)
    lattice = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    random = torch.rand(5000, 2, generator=torch.Generator().manual_seed(topk)) * torch.tensor([width, height])
    centers = torch.cat([lattice, random])
    assigner = ATSSAssigner(topk=topk)
    windowed, win_strides = assigner._candidates(points_xy, point_strides, counts, sizes, centers)
    dense, dense_strides = assigner._candidates(points_xy, point_strides, counts, None, centers)
    assert torch.equal(windowed, dense)
    assert torch.equal(win_strides, dense_strides)


@pytest.mark.parametrize("sync_free", [False, True])
def test_batch_assignment_equals_assigning_each_image_alone(sync_free):
    """One call for a batch (boxes of all images scored together) gives every image exactly its own assignment:
    images with 0, 1 and many boxes, duplicated boxes across images, ignore regions on some images only."""
    g = torch.Generator().manual_seed(7)
    sizes = [(32, 32), (16, 16), (8, 8)]
    points_xy, point_strides = level_points(sizes, [4, 8, 16], "cpu")
    counts = [h * w for h, w in sizes]
    boxes, ignores = [], []
    for n in [40, 0, 1, 120, 40]:
        wh = 2 + 14 * torch.rand(n, 2, generator=g)
        boxes.append(torch.cat([xy := torch.rand(n, 2, generator=g) * (128 - wh), xy + wh], dim=1))
        ignores.append(torch.tensor([[0.0, 0.0, 40.0, 30.0]]) if n % 3 == 0 else None)
    boxes[4] = boxes[0].clone()  # the same boxes in two images must not compete for points
    assigner = ATSSAssigner(sync_free=sync_free)
    batch = assigner.assign_batch(points_xy, point_strides, counts, boxes, ignores, level_shapes=sizes)
    assert batch.gt_index.shape == (5, points_xy.shape[0])
    for i, (gt, ignore) in enumerate(zip(boxes, ignores)):
        alone = assigner(points_xy, point_strides, counts, gt, ignore, level_shapes=sizes)
        assert torch.equal(batch.gt_index[i], alone.gt_index), i
        assert torch.equal(batch.similarity[i], alone.similarity), i
    assert torch.equal(batch.gt_index[0], batch.gt_index[4])
    assert (batch.gt_index[1] < 0).all() and (batch.gt_index[1] == IGNORE).any()
