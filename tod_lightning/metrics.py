"""AI-TOD detection metric (torchmetrics) backed by faster-coco-eval.

Protocol (cocoapi-aitod ``aitodpycocotools``, see design/methods.md §8):

* IoU thresholds 0.50:0.05:0.95, recall thresholds 0:0.01:1 (COCO defaults).
* Area bins on the GT annotation ``area`` (px², default box w*h in ORIGINAL image pixels):
  all [0, 1e10], vt [0, 64], t [64, 256], s [256, 1024], m [1024, 1e10]. COCOeval ignores a GT for a
  bin when ``area < lo or area > hi``, so bounds are inclusive: area == 64 counts in both vt and t.
* maxDets (1, 100, 1500). EVERY AP row (AP, AP50, AP75, AP_<bin>) and every AR row is read at the
  last maxDets index (1500), as aitodpycocotools >= 8a8caff does. pycocotools' ``summarize()``
  hard-codes 100 for its first row, so we never call ``summarize()``: rows are computed here from
  ``eval['precision']`` (T x R x K x A x M) / ``eval['recall']`` (T x K x A x M) like ``_summarize``
  (mean over entries > -1, -1 if none; an empty bin is -1, not 0).
* Backend: faster-coco-eval 1.8.0 (``COCOeval_faster(ranges=...)``, option added in 1.7; it always
  prepends "all" = [0, 1e5**2] = [0, 1e10]; summary key names changed between 1.7 and 1.8, hence we read
  the raw arrays). Equal to pycocotools 2.0.11 to 1e-6 (tests/test_metrics.py).
  Not provided: AP@0.25 and oLRP of the original AI-TOD summary.
"""

from __future__ import annotations

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval import __version__ as FCE_VERSION
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat, rank_zero_warn

from tod_lightning.structures import Detections, Target

DEFAULT_AREA_RANGES: dict[str, tuple[float, float]] = {
    "vt": (0.0, 64.0),
    "t": (64.0, 256.0),
    "s": (256.0, 1024.0),
    "m": (1024.0, 1e10),
}

# state name -> (input key, trailing shape, dtype). Each update appends ONE flat tensor per state
# (all its images concatenated); per-image counts split them again. torchmetrics' sync pre-concatenates
# list states, so a compute() costs one all_gather per state. iscrowd is uint8, not bool: gloo
# all_gather and the F.pad of uneven shapes in gather_all_tensors handle it safely.
_DET_STATES = {
    "det_boxes_xyxy": ("boxes_xyxy", (4,), torch.float32),
    "det_scores": ("scores", (), torch.float32),
    "det_labels": ("labels", (), torch.int64),
}
_GT_STATES = {
    "gt_boxes_xyxy": ("boxes_xyxy", (4,), torch.float32),
    "gt_labels": ("labels", (), torch.int64),
    "gt_areas": ("areas", (), torch.float64),
    "gt_iscrowd": ("iscrowd", (), torch.uint8),
}


def _numpy(state: list[torch.Tensor] | torch.Tensor) -> np.ndarray | None:
    """A cat-state as one numpy array: a list before sync, already one tensor after it."""
    if isinstance(state, list) and not state:
        return None
    return dim_zero_cat(state).cpu().numpy()


class AITODMetric(Metric):
    """AI-TOD AP/AR (see module docstring). ``update(preds, targets)`` takes one dict per image.

    preds: ``boxes_xyxy`` (D,4) original-image pixels, ``scores`` (D,), ``labels`` (D,) int64.
    targets: ``boxes_xyxy`` (G,4), ``labels`` (G,), ``image_id`` (int / 0-d tensor), optional
    ``areas`` (G,) (default w*h) and ``iscrowd`` (G,) bool (COCO crowd = ignore region; label ``-1``: an
    ignore region of every class).
    Duplicate image ids (DistributedSampler padding) are dropped after sync, keeping the first.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        area_ranges: dict[str, tuple[float, float]] | None = None,
        max_dets: tuple[int, int, int] = (1, 100, 1500),
        iou_thresholds: list[float] | None = None,
        class_metrics: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.area_ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in (area_ranges or DEFAULT_AREA_RANGES).items()}
        if "all" in self.area_ranges:
            raise ValueError("'all' is reserved: faster-coco-eval always prepends it as [0, 1e10]")
        self.max_dets = sorted(int(m) for m in max_dets)  # COCOeval sorts maxDets itself; keep them aligned
        self.iou_thresholds = None if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
        self.class_metrics = class_metrics
        for name in (*_DET_STATES, *_GT_STATES, "det_counts", "gt_counts", "image_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} preds for {len(targets)} targets")
        if not targets:
            return
        dev = self.device

        def gt_field(t: dict, key: str):
            if key in t:
                return t[key]
            boxes_xyxy = torch.as_tensor(t["boxes_xyxy"], dtype=torch.float64).reshape(-1, 4)
            if key == "areas":  # COCO "area" default: box w*h, in float64 like the json field
                return (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
            if key == "iscrowd":
                return torch.zeros(len(boxes_xyxy))
            raise KeyError(key)

        def append(states: dict, dicts: list[dict], get) -> None:
            for name, (key, shape, dtype) in states.items():
                parts = [torch.as_tensor(get(d, key), dtype=dtype, device=dev).reshape(-1, *shape) for d in dicts]
                getattr(self, name).append(torch.cat(parts))

        append(_DET_STATES, preds, lambda d, key: d[key])
        append(_GT_STATES, targets, gt_field)
        self.det_counts.append(torch.tensor([len(p["scores"]) for p in preds], dtype=torch.int64, device=dev))
        self.gt_counts.append(torch.tensor([len(t["labels"]) for t in targets], dtype=torch.int64, device=dev))
        self.image_ids.append(torch.tensor([int(t["image_id"]) for t in targets], dtype=torch.int64, device=dev))

    def update_detections(self, detections: list[Detections], targets: list[Target]) -> None:
        """``update`` from decoded detections in network-input pixels and the batch's targets.

        Each detection is mapped back to its original image (``Detections.to_original``) and scored against
        the target's ``orig_*`` annotations: the file's ground truth, not the augmented one.
        """
        preds, gts = [], []
        for det, target in zip(detections, targets, strict=True):
            det = det.to_original(target.scale, target.orig_size)
            preds.append({"boxes_xyxy": det.boxes_xyxy, "scores": det.scores, "labels": det.labels})
            gts.append(
                {
                    "boxes_xyxy": target.orig_boxes_xyxy,
                    "labels": target.orig_labels,
                    "areas": target.orig_areas,
                    "iscrowd": target.orig_iscrowd,
                    "image_id": target.image_id,
                }
            )
        self.update(preds, gts)

    def _gather_kept(self, names, image_ids: np.ndarray, counts: np.ndarray, keep_img: np.ndarray) -> dict:
        """Concatenated per-object states (plus their ``image_id``) restricted to the kept images."""
        keep = np.repeat(keep_img, counts)
        out = {n: _numpy(getattr(self, n))[keep] for n in names}
        out["image_id"] = np.repeat(image_ids, counts)[keep]
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        labels = list(self.area_ranges)
        keys = ["AP", "AP50", "AP75", *(f"AP_{k}" for k in labels), "AR", *(f"AR_{k}" for k in labels)]
        image_ids = _numpy(self.image_ids)
        if image_ids is None or image_ids.size == 0:
            rank_zero_warn("AITODMetric.compute() called without any image; returning -1 for all rows.")
            return {k: torch.tensor(-1.0) for k in keys}

        # After the DDP gather, padded duplicates of an image appear twice: keep the first occurrence only.
        _, first = np.unique(image_ids, return_index=True)
        keep_img = np.zeros(image_ids.size, dtype=bool)
        keep_img[first] = True
        det = self._gather_kept(_DET_STATES, image_ids, _numpy(self.det_counts), keep_img)
        gt = self._gather_kept(_GT_STATES, image_ids, _numpy(self.gt_counts), keep_img)

        # An ignore region of every class (label -1, VisDrone's "ignored regions") becomes one crowd per
        # category: COCOeval matches crowds within a category only.
        agnostic = gt["gt_labels"] < 0
        # COCO category id = contiguous label + 1; the category list is the union of GT labels, as
        # COCOeval only evaluates GT categories (detection-only classes must not create rows).
        cat_labels = np.unique(gt["gt_labels"][~agnostic])
        if agnostic.any() and cat_labels.size:
            n_cat = cat_labels.size
            expanded = {k: np.repeat(v[agnostic], n_cat, axis=0) for k, v in gt.items()}
            expanded["gt_labels"] = np.tile(cat_labels, int(agnostic.sum()))
            expanded["gt_iscrowd"] = np.ones_like(expanded["gt_iscrowd"])
            gt = {k: np.concatenate([v[~agnostic], expanded[k]]) for k, v in gt.items()}
        if cat_labels.size == 0:
            rank_zero_warn("AITODMetric: no ground truth boxes; returning -1 for all rows.")
            return {k: torch.tensor(-1.0) for k in keys}
        images = [{"id": int(i)} for i in image_ids[keep_img]]
        cats = [{"id": int(c) + 1} for c in cat_labels]
        gt_boxes_xyxy = gt["gt_boxes_xyxy"].astype(np.float64)
        gt_boxes_xywh = np.concatenate([gt_boxes_xyxy[:, :2], gt_boxes_xyxy[:, 2:] - gt_boxes_xyxy[:, :2]], 1)
        gt_anns = [
            {"id": j + 1, "image_id": i, "category_id": c + 1, "bbox": b, "area": a, "iscrowd": cr}
            for j, (i, c, b, a, cr) in enumerate(
                zip(
                    gt["image_id"].tolist(),
                    gt["gt_labels"].tolist(),
                    gt_boxes_xywh.tolist(),
                    gt["gt_areas"].tolist(),
                    gt["gt_iscrowd"].astype(int).tolist(),
                )
            )
        ]
        # Detections are built directly (not via loadRes, which adds polygons we do not need); the det
        # "area" (w*h) decides whether an unmatched detection is ignored in a bin, exactly as loadRes sets it.
        det_boxes_xyxy = det["det_boxes_xyxy"].astype(np.float64)
        det_boxes_xywh = np.concatenate([det_boxes_xyxy[:, :2], det_boxes_xyxy[:, 2:] - det_boxes_xyxy[:, :2]], 1)
        det_areas = (det_boxes_xywh[:, 2] * det_boxes_xywh[:, 3]).tolist()
        dt_anns = [
            {"id": j + 1, "image_id": i, "category_id": c + 1, "bbox": b, "area": a, "score": s, "iscrowd": 0}
            for j, (i, c, b, a, s) in enumerate(
                zip(
                    det["image_id"].tolist(),
                    det["det_labels"].tolist(),
                    det_boxes_xywh.tolist(),
                    det_areas,
                    det["det_scores"].astype(np.float64).tolist(),
                )
            )
        ]
        coco_gt = COCO({"images": images, "categories": cats, "annotations": gt_anns})
        coco_dt = COCO({"images": images, "categories": cats, "annotations": dt_anns})
        ev = COCOeval_faster(
            coco_gt,
            coco_dt,
            "bbox",
            ranges={k: list(v) for k, v in self.area_ranges.items()},
            print_function=lambda *a, **k: None,
        )
        ev.params.maxDets = list(self.max_dets)
        if self.iou_thresholds is not None:
            ev.params.iouThrs = self.iou_thresholds
        ev.evaluate()
        ev.accumulate()
        precision, recall = ev.eval["precision"], ev.eval["recall"]  # T x R x K x A x M, T x K x A x M
        iou_thrs, area_lbl = ev.params.iouThrs, ev.params.areaRngLbl  # area_lbl[0] == "all"

        def summarize(arr, area="all", iou=None, k=slice(None)):
            """pycocotools ``_summarize``, always at maxDets[-1]."""
            a = area_lbl.index(area)
            t = slice(None) if iou is None else np.flatnonzero(np.isclose(iou_thrs, iou))
            s = arr[t, :, k, a, -1] if arr.ndim == 5 else arr[t, k, a, -1]
            s = s[s > -1]
            return torch.tensor(float(np.mean(s)) if s.size else -1.0)

        out = {
            "AP": summarize(precision),
            "AP50": summarize(precision, iou=0.5),
            "AP75": summarize(precision, iou=0.75),
        }
        out.update({f"AP_{k}": summarize(precision, area=k) for k in labels})
        out["AR"] = summarize(recall)
        out.update({f"AR_{k}": summarize(recall, area=k) for k in labels})
        if self.class_metrics:
            out.update({f"AP_class_{int(c)}": summarize(precision, k=i) for i, c in enumerate(cat_labels)})
        return out


__all__ = ["AITODMetric", "DEFAULT_AREA_RANGES", "FCE_VERSION"]
