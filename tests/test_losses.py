"""Losses and criterion: empty images, exact zeros, weighting hooks, auxiliary terms."""

import pytest
import torch

from tod_lightning import losses
from tod_lightning.losses import AuxiliaryLoss, DetectionCriterion, FocalLoss, PositiveWeighting
from tod_lightning.losses.iou_loss import BoxLoss
from tod_lightning.ops import PointBoxCoder, level_points
from tod_lightning.structures import DetectorOutput, Target

# Every exported member of a loss family joins its contract test automatically.
_EXPORTED = [getattr(losses, name) for name in losses.__all__]
BOX_LOSSES = [c for c in _EXPORTED if isinstance(c, type) and issubclass(c, BoxLoss) and c is not BoxLoss]
WEIGHTINGS = [
    c for c in _EXPORTED if isinstance(c, type) and issubclass(c, PositiveWeighting) and c is not PositiveWeighting
]
STRIDES = [4, 8, 16]


def _output(batch: int = 2, k: int = 3, size: int = 64, requires_grad: bool = True) -> DetectorOutput:
    maps = lambda c: [torch.randn(batch, c, size // s, size // s, requires_grad=requires_grad) for s in STRIDES]  # noqa: E731
    return DetectorOutput(maps(k), maps(4), maps(1), STRIDES, (size, size))


def _target(boxes, labels) -> Target:
    return Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.long))


def test_families_are_discovered():
    assert {losses.GIoULoss, losses.DIoULoss, losses.CIoULoss} <= set(BOX_LOSSES)


@pytest.mark.parametrize("weighting_cls", WEIGHTINGS)
def test_positive_weighting_contract(weighting_cls):
    """Default-constructed weightings: one finite, non-negative weight per positive; none for no positives;
    the criterion stays finite with them, also for an image without boxes."""
    weighting = weighting_cls()
    gt = torch.tensor([[0.0, 0.0, 3.0, 2.0], [10.0, 10.0, 30.0, 26.0], [5.0, 5.0, 70.0, 60.0]])
    w = weighting(gt)
    assert w.shape == (3,) and torch.isfinite(w).all() and (w >= 0).all()
    assert weighting(gt[:0]).shape == (0,)
    crit = DetectionCriterion(positive_weighting=weighting)
    for boxes, labels in (([[5, 5, 9, 8], [20, 20, 40, 30]], [0, 2]), ([], [])):
        result = crit(_output(batch=1), [_target(boxes, labels)])
        assert torch.isfinite(result["loss"])


@pytest.mark.parametrize("loss_cls", BOX_LOSSES)
def test_box_loss_contract(loss_cls):
    loss = loss_cls()
    a = torch.tensor([[10.0, 10.0, 14.0, 13.0], [0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    assert torch.allclose(loss(a, a.detach()), torch.zeros(2), atol=1e-5)
    disjoint = loss(a, a.detach() + 50)
    assert (disjoint > 1.0).all(), "disjoint boxes must cost more than IoU's ceiling of 1"
    disjoint.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert loss(a[:0], a[:0]).shape == (0,)


def _box_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n + 6, 4)`` predicted and ground-truth boxes: random ones (some overlapping, some disjoint), then a
    shared edge, a corner touch, identical boxes, one inside the other, a zero-width box and a crossing."""
    g = torch.Generator().manual_seed(seed)
    xy, wh = torch.rand(n, 2, generator=g) * 40, 1 + torch.rand(n, 2, generator=g) * 20
    gt = torch.cat([xy, xy + wh], 1)
    pred = gt + torch.randn(n, 4, generator=g) * torch.tensor([4.0, 4.0, 12.0, 12.0])  # (n, 4), ~1/4 disjoint
    pred = torch.cat([pred[:, :2], torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)], 1)
    edge = [[0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]], [[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0]]
    same, inside = [[2.0, 3.0, 9.0, 7.0]] * 2, [[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 8.0, 8.0]]
    flat, cross = [[5.0, 1.0, 5.0, 9.0], [2.0, 2.0, 9.0, 9.0]], [[0.0, 4.0, 12.0, 6.0], [5.0, 0.0, 7.0, 10.0]]
    special = torch.tensor([edge[0], edge[1], same, inside, flat, cross])  # (6, 2, 4)
    return torch.cat([pred, special[:, 0]]), torch.cat([gt, special[:, 1]])


@pytest.mark.parametrize(
    "name, ours",
    [
        ("generalized_box_iou_loss", losses.GIoULoss),
        ("distance_box_iou_loss", losses.DIoULoss),
        ("complete_box_iou_loss", losses.CIoULoss),
    ],
)
def test_iou_losses_are_torchvisions_bit_for_bit_without_host_syncs(name, ours):
    """Values and gradients equal torchvision's exactly (its arithmetic), on overlapping, disjoint and touching
    pairs; but no boolean-mask indexing, which waits for the device each time on an accelerator."""
    import torchvision.ops

    from tod_lightning.benchmarking import count_torch_ops

    pred, gt = _box_pairs(500, seed=0)
    theirs = getattr(torchvision.ops, name)
    results = {}
    for label, fn in (("ours", lambda p, t: ours()(p, t)), ("tv", lambda p, t: theirs(p, t, eps=1e-7))):
        p, t = pred.clone().requires_grad_(), gt.clone().requires_grad_()
        loss = fn(p, t)
        loss.sum().backward()
        results[label] = (loss.detach(), p.grad, t.grad)
        p, t = pred.clone().requires_grad_(), gt.clone().requires_grad_()
        results[label + " syncs"] = count_torch_ops(lambda: fn(p, t).sum().backward()).num_syncs
    for mine, reference in zip(results["ours"], results["tv"]):
        assert torch.equal(mine, reference)
    assert results["ours"][0][-6:].isfinite().all() and (results["ours"][1] != 0).any()
    assert results["ours syncs"] == 0 and results["tv syncs"] > 0  # torchvision's masks: what this file avoids


def test_focal_loss_matches_torchvision_formula():
    logits = torch.randn(5, 3)
    targets = (torch.rand(5, 3) > 0.5).float()
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    expected = (0.25 * targets + 0.75 * (1 - targets)) * ce * (1 - p_t) ** 2
    assert torch.allclose(FocalLoss(0.25, 2.0)(logits, targets), expected, atol=1e-6)


def test_image_without_boxes_gives_zero_box_loss_and_finite_cls_loss():
    out = _output(batch=1)
    result = DetectionCriterion()(out, [_target([], [])])
    assert result["loss_box"].item() == 0.0
    assert result["loss_quality"].item() == 0.0
    assert torch.isfinite(result["loss_cls"]) and result["loss_cls"] > 0
    result["loss"].backward()
    assert torch.isfinite(out.cls_logits[0].grad).all()


def test_perfect_boxes_give_zero_box_loss():
    """Deltas that decode exactly to the ground truth at every positive -> box loss 0 (GIoU of equal boxes)."""
    gt = torch.tensor([[10.0, 12.0, 13.0, 14.0], [30.0, 30.0, 50.0, 44.0]])
    out = _output(batch=1, requires_grad=False)
    crit = DetectionCriterion()
    sizes = [tuple(m.shape[-2:]) for m in out.cls_logits]
    points_xy, strides = level_points(sizes, STRIDES, "cpu")
    assign = crit.assigner(points_xy, strides, [h * w for h, w in sizes], gt)
    deltas = torch.zeros(points_xy.shape[0], 4)
    pos = assign.gt_index >= 0
    deltas[pos] = PointBoxCoder().encode(gt[assign.gt_index[pos]], points_xy[pos], strides[pos])
    start = 0
    for level, (h, w) in enumerate(sizes):
        out.box_deltas[level] = deltas[start : start + h * w].T.reshape(1, 4, h, w)
        start += h * w
    result = crit(out, [Target(gt, torch.tensor([0, 1]))])
    assert result["loss_box"].item() == pytest.approx(0.0, abs=1e-5)


def test_mixed_batch_and_normalisation():
    out = _output(batch=2)
    targets = [_target([[5, 5, 9, 8], [20, 20, 40, 30]], [0, 2]), _target([], [])]
    result = DetectionCriterion()(out, targets)
    assert result["num_pos"] >= 2
    for key in ("loss", "loss_cls", "loss_box", "loss_quality"):
        assert torch.isfinite(result[key])
    result["loss"].backward()


class _DoubleSmall(PositiveWeighting):
    def forward(self, matched_gt_xyxy):
        area = (matched_gt_xyxy[:, 2] - matched_gt_xyxy[:, 0]) * (matched_gt_xyxy[:, 3] - matched_gt_xyxy[:, 1])
        return torch.where(area <= 64, 2.0, 1.0)


def test_positive_weighting_sees_matched_boxes():
    out = _output(batch=1, requires_grad=False)
    targets = [_target([[5, 5, 9, 8]], [1])]  # area 12 -> weight 2
    plain = DetectionCriterion()(out, targets)
    weighted = DetectionCriterion(positive_weighting=_DoubleSmall())(out, targets)
    assert weighted["loss_box"].item() == pytest.approx(2 * plain["loss_box"].item(), rel=1e-5)
    assert weighted["loss_quality"].item() == pytest.approx(2 * plain["loss_quality"].item(), rel=1e-5)


class _ImageMean(AuxiliaryLoss):
    def forward(self, output, targets, images01):
        return {"aux": images01.mean() * 0 + 0.5}


def test_auxiliary_losses_are_added():
    out = _output(batch=1, requires_grad=False)
    result = DetectionCriterion(aux_losses=[_ImageMean()])(out, [_target([], [])], torch.rand(1, 3, 64, 64))
    assert result["loss_aux"].item() == 0.5
    parts = result["loss_cls"] + result["loss_box"] + result["loss_quality"] + result["loss_aux"]
    assert result["loss"].item() == pytest.approx(parts.item())
