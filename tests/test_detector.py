"""Head, detector and post-processing contracts."""

import math
from functools import partial

import pytest
import torch

from tod_lightning.models import FPN, DenseHead, Detector, PostProcessor, TimmBackbone
from tod_lightning.ops import PointBoxCoder, level_points
from tod_lightning.structures import DetectorOutput


def _detector(num_classes: int = 3) -> Detector:
    return Detector(
        TimmBackbone("resnet18"),
        [partial(FPN, out_channels=32, max_level=6)],
        partial(DenseHead, num_convs=1),
        num_classes,
    )


def test_detector_output_structure_same_in_train_and_eval():
    det = _detector()
    x = torch.rand(2, 3, 128, 192)
    for mode in (det.train, det.eval):
        mode()
        out = det(x)
        assert isinstance(out, DetectorOutput)
        assert out.strides == [4, 8, 16, 32, 64]
        for cls, box, q, s in zip(out.cls_logits, out.box_deltas, out.quality_logits, out.strides):
            assert cls.shape == (2, 3, 128 // s, 192 // s)
            assert box.shape == (2, 4, 128 // s, 192 // s)
            assert q.shape == (2, 1, 128 // s, 192 // s)


def test_batch_of_two_equals_two_batches_of_one_in_eval():
    det = _detector().eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        both = det(x)
        first = det(x[:1])
    for a, b in zip(both.cls_logits + both.box_deltas, first.cls_logits + first.box_deltas):
        assert torch.allclose(a[:1], b, atol=1e-5)


def test_input_not_multiple_of_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the largest stride 64"):
        _detector()(torch.rand(1, 3, 100, 128))


def test_normalisation_inside_uses_backbone_statistics():
    det = _detector()
    assert torch.allclose(det.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_head_initial_foreground_probability():
    head = DenseHead([16, 16], [4, 8], num_classes=2, num_convs=1, prior_prob=0.01)
    cls, _, _ = head([torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)])
    # RetinaNet prior: logits start near logit(0.01) = -4.595 (weights are small, the bias sets it)
    assert cls[0].mean().item() == pytest.approx(-4.595, abs=0.2)
    with pytest.raises(ValueError, match="equal channels"):
        DenseHead([16, 32], [4, 8], num_classes=2)


def test_box_coder_round_trip_including_boxes_not_containing_the_point():
    coder = PointBoxCoder()
    points = torch.tensor([[2.0, 2.0], [6.0, 2.0], [100.0, 50.0]])
    strides = torch.tensor([4.0, 4.0, 16.0])
    boxes = torch.tensor([[3.0, 3.0, 5.0, 5.0], [0.5, 0.5, 2.5, 2.5], [60.0, 40.0, 180.0, 90.0]])
    assert torch.allclose(coder.decode(coder.encode(boxes, points, strides), points, strides), boxes, atol=1e-4)


def _output_with_boxes(boxes_xyxy, scores, labels, num_classes=2, size=64):
    """A DetectorOutput whose stride-4 level predicts exactly the given boxes at chosen points."""
    strides = [4]
    h = w = size // 4
    points_xy, point_strides = level_points([(h, w)], strides, "cpu")
    cls = torch.full((1, num_classes, h * w), -20.0)
    quality = torch.full((1, 1, h * w), 20.0)  # sigmoid = 1, so score = sqrt(cls prob)
    deltas = torch.zeros(1, 4, h * w)
    for i, (box, score, label) in enumerate(zip(boxes_xyxy, scores, labels)):
        prob = score**2
        cls[0, label, i] = torch.logit(torch.tensor(prob))
        deltas[0, :, i] = PointBoxCoder().encode(torch.tensor(box), points_xy[i], point_strides[i])
    r = lambda t: t.reshape(1, -1, h, w)  # noqa: E731
    return DetectorOutput([r(cls)], [r(deltas)], [r(quality)], strides, (size, size))


def test_postprocess_nms_threshold_cap_and_order():
    boxes = [[10, 10, 20, 20], [10.5, 10, 20.5, 20], [10, 10, 20, 20], [40, 40, 44, 44], [1, 1, 3, 3]]
    scores = [0.9, 0.8, 0.7, 0.6, 0.04]
    labels = [0, 0, 1, 0, 0]
    out = _output_with_boxes(boxes, scores, labels)
    (det,) = PostProcessor(score_thresh=0.05, nms_iou=0.5)(out, torch.tensor([[64, 64]]))
    # the 0.8 duplicate is suppressed; the same box with another class survives (class-aware NMS);
    # the 0.04 box is under the score threshold
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.6], abs=1e-4)
    assert det.labels.tolist() == [0, 1, 0]
    assert torch.allclose(det.boxes_xyxy[0], torch.tensor([10.0, 10, 20, 20]), atol=1e-3)
    (capped,) = PostProcessor(max_per_image=2)(out, torch.tensor([[64, 64]]))
    assert capped.scores.tolist() == pytest.approx([0.9, 0.7], abs=1e-4)


def test_postprocess_clips_to_unpadded_size_and_separates_images():
    out = _output_with_boxes([[50, 50, 63, 63]], [0.9], [1])
    out2 = DetectorOutput(
        [torch.cat([m, m]) for m in out.cls_logits],
        [torch.cat([m, m]) for m in out.box_deltas],
        [torch.cat([m, m]) for m in out.quality_logits],
        out.strides,
        out.image_size,
    )
    dets = PostProcessor()(out2, torch.tensor([[64, 64], [56, 60]]))
    assert len(dets) == 2
    assert dets[0].boxes_xyxy[0].tolist() == pytest.approx([50, 50, 63, 63], abs=1e-3)
    assert dets[1].boxes_xyxy[0].tolist() == pytest.approx([50, 50, 60, 56], abs=1e-3)


def _dense_candidates(pp: PostProcessor, out: DetectorOutput, image_sizes: torch.Tensor):
    """Reference: score every (point, class) of the flattened maps, threshold, keep each image's pre_nms_topk best."""
    flat = lambda maps: torch.cat([m.flatten(2) for m in maps], 2).transpose(1, 2)  # noqa: E731  (B, P, C)
    scores = (flat(out.cls_logits).float().sigmoid() * flat(out.quality_logits).float().sigmoid()).sqrt()  # (B, P, K)
    deltas = flat(out.box_deltas).float()
    points_xy, point_strides = level_points([m.shape[-2:] for m in out.cls_logits], out.strides, "cpu")
    rows = []
    for b in range(scores.shape[0]):
        s = scores[b].reshape(-1)  # (P * K,) in (point, class) order
        idx = (s > pp.score_thresh).nonzero().squeeze(1)
        if len(idx) > pp.pre_nms_topk:  # the best, ties by position; then back to (point, class) order
            idx = idx[torch.sort(s[idx], descending=True, stable=True).indices[: pp.pre_nms_topk]].sort().values
        p, k = idx // scores.shape[2], idx % scores.shape[2]
        box = pp.coder.decode(deltas[b, p], points_xy[p], point_strides[p])
        h, w = image_sizes[b].tolist()
        box = torch.minimum(box.clamp(min=0), torch.tensor([w, h, w, h], dtype=box.dtype))
        ok = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
        rows.append((box[ok], s[idx][ok], k[ok], torch.full((int(ok.sum()),), b)))
    return tuple(torch.cat(parts) for parts in zip(*rows))


@pytest.mark.parametrize(
    "thresh,topk,dtype",
    [
        (0.05, 10000, torch.float32),
        (0.3, 10000, torch.float32),
        (0.05, 37, torch.float32),
        (0.0, 10000, torch.float32),
        (1.0, 10000, torch.float32),
        (0.05, 10000, torch.bfloat16),  # AMP outputs: the cut is compared in bf16
        (0.0513, 10000, torch.float16),
    ],
)
def test_candidates_equal_scoring_every_entry(thresh, topk, dtype):
    """The logit pre-selection drops nothing that passes, and the top-k path keeps each image's best."""
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 12), (8, 6), (4, 3)]  # odd, non-square levels
    maps = lambda c, shift, scale: [scale * torch.randn(3, c, h, w, generator=g) + shift for h, w in shapes]  # noqa: E731
    out = DetectorOutput(maps(4, -3.0, 2.0), maps(4, 0.0, 0.5), maps(1, 0.0, 2.0), [4, 8, 16], (64, 48))
    if dtype != torch.float32:  # logits packed near the cut, where rounding the cut to the dtype would bite
        out = DetectorOutput(
            [(m / 8 - 5.96).to(dtype) for m in out.cls_logits],
            [m.to(dtype) for m in out.box_deltas],
            [(m.abs() + 4).to(dtype) for m in out.quality_logits],  # quality ~ 1: the score ~ sqrt(cls prob)
            out.strides,
            out.image_size,
        )
    sizes = torch.tensor([[64, 48], [50, 40], [64, 30]])
    pp = PostProcessor(score_thresh=thresh, pre_nms_topk=topk)
    got, want = pp.candidates(out, sizes), _dense_candidates(pp, out, sizes)
    assert len(want[1]) > 0 or thresh == 1.0
    if topk == 37:  # the top-k path ran: some image had more candidates than that
        assert (
            torch.bincount(want[3]).max()
            <= 37
            < torch.bincount(_dense_candidates(PostProcessor(), out, sizes)[3]).max()
        )
    # The same candidates: boxes, labels and images bit for bit; scores to 1 ulp (torch's CPU sigmoid rounds the
    # tail of a vectorised loop differently, so a value can differ with its position in the tensor).
    rows = lambda c: sorted(zip(c[3].tolist(), c[2].tolist(), map(tuple, c[0].tolist()), c[1].tolist()))  # noqa: E731
    got_rows, want_rows = rows(got), rows(want)
    assert [r[:3] for r in got_rows] == [r[:3] for r in want_rows]
    assert torch.allclose(
        torch.tensor([r[3] for r in got_rows]), torch.tensor([r[3] for r in want_rows]), rtol=2e-7, atol=0
    )


def test_candidates_keep_a_bf16_logit_just_above_the_cut():
    """The pre-selection compares in the map's dtype: a cut rounded up to bf16 would drop a logit that passes."""
    logit = -5.96875  # a bf16 value; the threshold's exact cut lies 0.003 below it, within bf16's rounding of it
    thresh = math.sqrt(torch.sigmoid(torch.tensor(logit - 0.003, dtype=torch.float64)).item())
    cls = torch.full((1, 2, 4, 4), -20.0, dtype=torch.bfloat16)
    cls[0, 1, 2, 3] = logit
    quality = torch.full((1, 1, 4, 4), 30.0, dtype=torch.bfloat16)  # sigmoid 1.0: the score is sqrt(sigmoid(cls))
    out = DetectorOutput([cls], [torch.zeros(1, 4, 4, 4, dtype=torch.bfloat16)], [quality], [4], (16, 16))
    boxes, scores, labels, images = PostProcessor(score_thresh=thresh).candidates(out, torch.tensor([[16, 16]]))
    assert labels.tolist() == [1] and scores.item() > thresh


def test_postprocess_keeps_more_than_1500_candidates_before_nms():
    pp = PostProcessor()
    assert pp.max_per_image >= 1500 and pp.pre_nms_topk >= 5 * pp.max_per_image
