"""Synthetic detections and ground truth for checking and timing the AI-TOD metric (tests and benchmarks)."""

from __future__ import annotations

import numpy as np
import torch


def synthetic_detections(
    n_images: int,
    dets_per_image: int | None = None,
    n_classes: int = 4,
    seed: int = 0,
    scene: float = 700.0,
    crowded_every: int = 0,
    crowd_fraction: float = 1 / 40,
    explicit_areas: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Per-image (pred, target) dicts in the metric's input format.

    Ground truth in every AI-TOD area bin (vt/t/s/m) and, on every image, one 8x8 box (area exactly 64: it counts
    in vt and in t); a few crowd regions per image. Detections: 1-2 jittered copies of each object (10 % with a
    wrong label) and random false positives, some of label ``n_classes``, which has no ground truth (it must not
    create a category row).

    Args:
        dets_per_image: exactly this many detections per image (half as many objects); ``None``: 5-59 objects
            and 150 false positives per image (``crowded_every`` images get 220 objects).
        scene: side of the square the objects are drawn in.
        crowded_every: every k-th image (from the first) has 220 objects, 70 % of them of class 0, so that one
            (image, class) pair has more than 100 detections; 0: none.
        crowd_fraction: share of each image's objects that are crowd regions (at least one).
        explicit_areas: the second image's targets carry ``areas`` (as a json's would) that differ from w * h.
    """
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for img in range(n_images):
        crowded = crowded_every > 0 and img % crowded_every == 0
        if dets_per_image is not None:
            n_gt = max(4, int(dets_per_image * 0.5))
        else:
            n_gt = 220 if crowded else int(rng.integers(5, 60))
        side = np.concatenate(
            [
                rng.uniform(2, 8, n_gt // 3),  # vt (< 64 px²)
                rng.uniform(8, 16, n_gt // 3),  # t
                rng.uniform(16, 32, n_gt // 6),  # s
                rng.uniform(32, 90, n_gt - n_gt // 3 * 2 - n_gt // 6),  # m
            ]
        )
        wh = side[:, None] * rng.uniform(0.7, 1.3, (n_gt, 2))
        xy = rng.uniform(0, scene, (n_gt, 2))
        gt = np.concatenate([xy, xy + wh], 1)  # (n_gt, 4) xyxy
        gt[0] = [100, 100, 108, 108]  # area exactly 64: counts in both vt and t
        if crowded:
            labels = np.where(rng.random(n_gt) < 0.7, 0, rng.integers(0, n_classes, n_gt))
        else:
            labels = rng.integers(0, n_classes, n_gt)
        iscrowd = np.zeros(n_gt, dtype=bool)
        iscrowd[rng.choice(n_gt, max(1, int(n_gt * crowd_fraction)), replace=False)] = True
        copies = rng.integers(1, 3, n_gt)
        src = np.repeat(np.arange(n_gt), copies)[:dets_per_image]  # [:None] keeps all
        size = (gt[src, 2:] - gt[src, :2]).repeat(2, 1)
        tp = gt[src] + rng.normal(0, 0.12, (len(src), 4)) * size
        tp_lab = np.where(rng.random(len(src)) < 0.9, labels[src], rng.integers(0, n_classes, len(src)))
        n_fp = 150 if dets_per_image is None else dets_per_image - len(src)
        fxy = rng.uniform(0, scene + 50, (n_fp, 2))
        fp = np.concatenate([fxy, fxy + rng.uniform(2, 60, (n_fp, 2))], 1)
        fp_lab = rng.integers(0, n_classes + 1, n_fp)  # label n_classes: detection-only class, no row
        boxes = np.concatenate([tp, fp])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(src)), rng.uniform(0.0, 0.8, n_fp)])
        preds.append(
            {
                "boxes_xyxy": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(np.concatenate([tp_lab, fp_lab]), dtype=torch.int64),
            }
        )
        target = {
            "boxes_xyxy": torch.tensor(gt, dtype=torch.float32),
            "labels": torch.tensor(labels),
            "image_id": 1000 + img,
            "iscrowd": torch.tensor(iscrowd),
        }
        if explicit_areas and img == 1:  # explicit areas (e.g. from a json) instead of box w*h decide the bins
            target["areas"] = torch.tensor((gt[:, 2:] - gt[:, :2]).prod(1) * rng.uniform(0.5, 1.0, n_gt))
        targets.append(target)
    return preds, targets
