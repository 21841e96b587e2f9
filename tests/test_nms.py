"""The grid NMS keeps exactly what torchvision's NMS keeps, whatever the sizes, groups, dtypes and coordinates."""

import pytest
import torch
from torchvision.ops import batched_nms, nms

from tod_lightning.ops.nms import class_aware_nms, grid_batched_nms


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
        (2000, 200, 0.1, 3, False, False),  # a low threshold: partners of very different sizes
    ],
)
def test_same_boxes_kept_as_torchvision(n, size, threshold, big, integer, tied):
    boxes, scores, groups = _scene(n, size, seed=n + int(10 * threshold), big=big, integer=integer, tied=tied)
    ref = _reference(boxes, scores, groups, threshold)
    out = grid_batched_nms(boxes, scores, groups, threshold)
    assert set(out.tolist()) == set(ref.tolist())
    assert len(out) == len(ref) < len(boxes)  # duplicates were removed
    assert (scores[out][1:] <= scores[out][:-1]).all()  # decreasing score, as torchvision returns them


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6])
def test_mixed_sizes_in_a_group(threshold):
    """Cells are sized for 90 % of a group's boxes; the other 15 % (5-60x larger) cover many cells each."""
    g = torch.Generator().manual_seed(3)
    n = 1000
    centers = torch.rand(n, 2, generator=g) * 300
    side = torch.where(torch.rand(n, 1, generator=g) < 0.85, 2.0, 40.0) * (1 + 2 * torch.rand(n, 1, generator=g))
    boxes = torch.cat([centers - side / 2, centers + side / 2], 1)[:, None] + torch.randn(n, 3, 4, generator=g) * 0.3
    boxes = boxes.reshape(-1, 4)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 0.1)
    scores = torch.rand(len(boxes), generator=g)
    groups = torch.arange(len(boxes)).div(3, rounding_mode="floor") % 2
    ref = _reference(boxes, scores, groups, threshold)
    out = grid_batched_nms(boxes, scores, groups, threshold)
    assert set(out.tolist()) == set(ref.tolist()) and len(out) < len(boxes)
    large = (boxes[:, 2:] - boxes[:, :2]).max(1).values > 20
    assert int(large[out].sum()) >= 5  # large boxes kept, each covering more than 4 cells


def test_kept_boxes_covering_the_grid_many_times():
    """300 boxes of 2 px over 1000 px (32 px cells after coarsening) and 15 nested squares around the centre,
    sides 0.77x apart (IoU 0.59: all kept at 0.6), which cover the 1024 cells ~2.5 times over: more entries than
    the kernel's first lists (4 per box) hold."""
    g = torch.Generator().manual_seed(8)
    xy = torch.rand(300, 2, generator=g) * 998
    tiny = torch.cat([xy, xy + 2], 1)
    nested = 500 + 500 * 0.77 ** torch.arange(15.0)[:, None] * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    boxes = torch.cat([tiny, tiny + 0.2, nested])
    scores = torch.rand(len(boxes), generator=g)
    groups = torch.zeros(len(boxes), dtype=torch.long)
    out = grid_batched_nms(boxes, scores, groups, 0.6)
    assert set(out.tolist()) == set(_reference(boxes, scores, groups, 0.6).tolist())
    assert set(range(600, 615)) <= set(out.tolist()) and len(out) < len(boxes)


def test_degenerate_negative_and_double_boxes():
    """Inverted boxes (x2 < x1: kept, suppress nothing), zero-area boxes, negative coordinates (cells left of and
    above the origin), float64 boxes and scores: torchvision's kept set."""
    boxes, scores, groups = _scene(3000, 300, seed=4)
    boxes = boxes - 150.0  # half the scene at negative coordinates
    boxes[::11, 0], boxes[::11, 2] = boxes[::11, 2], boxes[::11, 0].clone()  # inverted on x
    boxes[5::13, 3] = boxes[5::13, 1]  # zero height
    for dtype in (torch.float32, torch.float64):
        b, s = boxes.to(dtype), scores.to(dtype)
        ref = _reference(b, s, groups, 0.5)
        out = grid_batched_nms(b, s, groups, 0.5)
        assert set(out.tolist()) == set(ref.tolist())
        assert set(range(0, len(b), 11)) <= set(out.tolist())  # the inverted boxes survive, as in torchvision


def test_boxes_on_cell_borders():
    """Integer boxes of power-of-two sides on a power-of-two lattice: extents end exactly on cell borders, and
    touching boxes (IoU 0) or exact IoU ties with the threshold decide nothing wrongly."""
    g = torch.Generator().manual_seed(9)
    xy = torch.randint(0, 64, (2000, 2), generator=g).float() * 4
    side = 2.0 ** torch.randint(1, 4, (2000, 1), generator=g).float()
    boxes = torch.cat([xy, xy + side], 1)
    scores = torch.rand(2000, generator=g)
    groups = torch.randint(0, 3, (2000,), generator=g)
    for threshold in (0.0, 1 / 3, 0.5):
        ref = _reference(boxes, scores, groups, threshold)
        out = grid_batched_nms(boxes, scores, groups, threshold)
        assert set(out.tolist()) == set(ref.tolist()) and len(out) < len(boxes)


def test_negative_thresholds_use_torchvision():
    boxes, scores, groups = _scene(1500, 200, seed=2)
    assert torch.equal(grid_batched_nms(boxes, scores, groups, -0.1), batched_nms(boxes, scores, groups, -0.1))
    empty = torch.zeros(0, 4)
    assert grid_batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.6).numel() == 0


def test_dispatch_takes_the_grid_on_cpu(monkeypatch):
    import tod_lightning.ops.nms as module

    calls = []
    grid = lambda b, s, g, t, *cap: calls.append(len(b)) or module.batched_nms(b, s, g, t)  # noqa: E731
    monkeypatch.setattr(module, "grid_batched_nms", grid)
    boxes, scores, groups = _scene(5000, 600, seed=5)
    with pytest.raises(RuntimeError):  # torchvision's dtype rules: float32 and float64 on CPU
        module.class_aware_nms(boxes.half(), scores.half(), groups, 0.6)
    module.class_aware_nms(boxes, scores, groups, -0.5)  # a negative threshold: torchvision's kernel
    assert calls == []
    module.class_aware_nms(boxes[:3], scores[:3], groups[:3], 0.6)
    module.class_aware_nms(boxes.double(), scores.double(), torch.arange(5000) % 32, 0.0)
    assert calls == [3, 5000]
    kept = module.class_aware_nms(boxes, scores, groups, 0.6)
    assert set(kept.tolist()) == set(batched_nms(boxes, scores, groups, 0.6).tolist())


def test_sparse_group_ids_and_a_huge_canvas():
    """Group ids far apart (renumbered) and boxes scattered over a 10^6-px canvas (coarser cells for a sparse
    group, so its table of cells stays small): the same kept set as torchvision."""
    boxes, scores, groups = _scene(3000, 300, seed=11, big=5)
    far = torch.zeros(len(boxes), 2)
    far[::7] = torch.rand(len(boxes[::7]), 2, generator=torch.Generator().manual_seed(0)) * 1e6  # scattered
    boxes = boxes + far.repeat(1, 2)
    groups = groups * 1_000_003 + 17
    ref = _reference(boxes, scores, groups, 0.6)
    out = grid_batched_nms(boxes, scores, groups, 0.6)
    assert set(out.tolist()) == set(ref.tolist()) and len(out) < len(boxes)


def test_every_box_its_own_group():
    """As many groups as boxes (one grid per box, interleaved in the score order): nothing is suppressed, and with a
    cap of 3 per image of 5 the best 3 boxes of each image are kept."""
    boxes, scores, _ = _scene(3000, 300, seed=14)
    groups = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))
    out = grid_batched_nms(boxes, scores, groups, 0.6)
    assert out.tolist() == torch.sort(scores, descending=True, stable=True).indices.tolist()
    images = groups % 5
    capped = grid_batched_nms(boxes, scores, groups, 0.6, images, 3)
    assert capped.tolist() == _first_of_each_image(out, images, 3) and len(capped) == 15


def test_coordinates_near_the_limit_and_boxes_with_gradients():
    """Boxes spread over +-2^39 px on both axes (a grid of 2^80 unit cells before coarsening: no int64 overflow in
    the cell count) and boxes that require grad (NMS selects, it does not differentiate): torchvision's kept set."""
    boxes, scores, groups = _scene(3000, 300, seed=13)
    far = torch.zeros(len(boxes), 2, dtype=torch.float64)
    far[::5] = torch.rand(len(boxes[::5]), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    boxes = boxes.double() + far.repeat(1, 2) * 2.0**40
    scores = scores.double()
    ref = _reference(boxes, scores, groups, 0.6)
    assert set(grid_batched_nms(boxes, scores, groups, 0.6).tolist()) == set(ref.tolist())
    with_grad = boxes.clone().requires_grad_()
    assert set(grid_batched_nms(with_grad, scores, groups, 0.6).tolist()) == set(ref.tolist())


def test_non_finite_boxes_fall_back_to_torchvision():
    boxes, scores, groups = _scene(3000, 300, seed=12)
    boxes[5] = float("nan")
    boxes[9, 2] = float("inf")
    assert torch.equal(grid_batched_nms(boxes, scores, groups, 0.6), batched_nms(boxes, scores, groups, 0.6))


def _first_of_each_image(kept, images, cap):
    """The reference cap: walk the kept boxes in order and take an image's first ``cap``."""
    taken, out = {}, []
    for k in kept.tolist():
        image = int(images[k])
        if taken.get(image, 0) < cap:
            taken[image] = taken.get(image, 0) + 1
            out.append(k)
    return out


@pytest.mark.parametrize("cap", [0, 1, 7, 150, 10**6])
def test_per_image_cap_is_torchvision_truncated(cap):
    """With ``max_per_image`` each image keeps its first ``cap`` kept boxes: torchvision's kept set in processing
    order (score, equal scores by index) truncated per image. Images 0, 1 and 3 (none in 2, so the kernel cannot
    count on every image id filling up), 4 classes each, scores tied in steps of 0.05 (the cap falls inside runs
    of equal scores); the fallback to torchvision (a NaN box) truncates torchvision's own order."""
    boxes, scores, labels = _scene(6000, 400, seed=cap % 97, tied=True)
    images = torch.tensor([0, 1, 3])[torch.randint(0, 3, (len(boxes),), generator=torch.Generator().manual_seed(2))]
    groups = images * 4 + labels % 4
    full = batched_nms(boxes, scores, groups, 0.6)
    by_score_then_index = sorted(full.tolist(), key=lambda k: (-float(scores[k]), k))
    out = grid_batched_nms(boxes, scores, groups, 0.6, images, cap)
    assert out.tolist() == _first_of_each_image(torch.tensor(by_score_then_index), images, cap)
    counts = torch.bincount(images[out], minlength=4).tolist()
    assert counts == [min(cap, int((images[full] == i).sum())) for i in range(4)]
    if 0 < cap < 150:
        assert len(out) == 3 * cap  # the cap binds in every image
    boxes[len(boxes) // 2] = float("nan")  # the torchvision fallback, capped by the same rule
    full = batched_nms(boxes, scores, groups, 0.6)
    out = grid_batched_nms(boxes, scores, groups, 0.6, images, cap)
    assert out.tolist() == _first_of_each_image(full, images, cap)


def test_per_image_cap_arguments_are_checked():
    boxes, scores, groups = _scene(100, 50, seed=1)
    images = torch.zeros(len(boxes), dtype=torch.long)
    with pytest.raises(ValueError, match="together"):
        grid_batched_nms(boxes, scores, groups, 0.6, images)
    with pytest.raises(ValueError, match=">= 0"):
        grid_batched_nms(boxes, scores, groups, 0.6, images, -1)
    with pytest.raises(ValueError, match="together"):  # torchvision's path (a negative threshold) checks too
        class_aware_nms(boxes, scores, groups, -0.1, images)
    images[groups == 3] = torch.arange(int((groups == 3).sum())) % 2  # group 3 in two images
    with pytest.raises(ValueError, match="spans two images"):
        grid_batched_nms(boxes, scores, groups, 0.6, images, 5)


def test_kernel_compiles_without_a_writable_cache(monkeypatch):
    """numba refuses ``cache=True`` where no cache folder is writable (a read-only install and home): the kernel
    is then compiled per process, with a warning naming NUMBA_CACHE_DIR, instead of failing the import."""
    import numba

    from tod_lightning.ops import compiled

    real = numba.njit

    def njit(**options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(**options)

    monkeypatch.setattr(compiled.numba, "njit", njit)
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        add = compiled.compile_kernel(lambda a, b: a + b)
    assert add(2, 3) == 5 and hasattr(add, "py_func")  # a numba dispatcher, not the Python function
