"""AITODMetric (tod_lightning/metrics.py) against pycocotools with the AI-TOD protocol."""

import contextlib
import io
import multiprocessing as mp

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO  # a declared dependency: a missing one must fail, not skip
from pycocotools.cocoeval import COCOeval

from tod_lightning.metrics import DEFAULT_AREA_RANGES, AITODMetric
from tod_lightning.synthetic_detections import synthetic_detections

ROW_KEYS = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR", "AR_vt", "AR_t", "AR_s", "AR_m"]


def make_case(seed=0, n_images=8, n_classes=4):
    """8 images: some crowded (one (image, class) pair has > 100 detections), explicit areas on one."""
    return synthetic_detections(n_images, n_classes=n_classes, seed=seed, crowded_every=3, explicit_areas=True)


def run_metric(preds, targets, chunk=3, **kwargs):
    metric = AITODMetric(**kwargs)
    for i in range(0, len(preds), chunk):
        metric.update(preds[i : i + chunk], targets[i : i + chunk])
    return {k: float(v) for k, v in metric.compute().items()}


# ----------------------------------------------------------------------------- pycocotools reference
def pycoco_rows(preds, targets, area_ranges=DEFAULT_AREA_RANGES, max_dets=(1, 100, 1500), all_m=False):
    """Rows read from pycocotools' eval arrays at maxDets index 2 (never summarize(), which uses 100).

    ``all_m=True`` returns ``[rows at maxDets index m for m in 0, 1, 2]`` from the same evaluation.
    """
    gt_anns, dt_anns = [], []
    for p, t in zip(preds, targets):
        iid = int(t["image_id"])
        gb = t["boxes_xyxy"].double().numpy()
        areas = t["areas"].double().numpy() if "areas" in t else (gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1])
        crowd = t["iscrowd"].numpy() if "iscrowd" in t else np.zeros(len(gb), bool)
        for b, lab, a, c in zip(gb, t["labels"].tolist(), areas, crowd):
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": iid,
                    "category_id": lab + 1,
                    "area": float(a),
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "iscrowd": int(c),
                }
            )
        for b, s, lab in zip(p["boxes_xyxy"].double().numpy(), p["scores"].double().tolist(), p["labels"].tolist()):
            dt_anns.append(
                {"image_id": iid, "category_id": lab + 1, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
            )
    cats = sorted({a["category_id"] for a in gt_anns})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": [{"id": int(t["image_id"])} for t in targets],
            "categories": [{"id": c} for c in cats],
            "annotations": gt_anns,
        }
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dt_anns), "bbox")
        ev.params.areaRng = [[0, 1e10], *map(list, area_ranges.values())]
        ev.params.areaRngLbl = ["all", *area_ranges]
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
    prec, rec = ev.eval["precision"], ev.eval["recall"]

    def row(arr, m, a=0, t=slice(None)):
        s = arr[t, :, :, a, m] if arr.ndim == 5 else arr[t, :, a, m]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    rows = []
    for m in range(len(max_dets)):
        out = {"AP": row(prec, m), "AP50": row(prec, m, t=0), "AP75": row(prec, m, t=5), "AR": row(rec, m)}
        for a, lbl in enumerate(area_ranges, start=1):
            out[f"AP_{lbl}"], out[f"AR_{lbl}"] = row(prec, m, a), row(rec, m, a)
        rows.append(out)
    return rows if all_m else rows[-1]


def assert_rows_close(got, ref, keys=ROW_KEYS, tol=1e-6):
    for k in keys:
        assert got[k] == pytest.approx(ref[k], abs=tol), (k, got[k], ref[k])


@pytest.fixture(scope="module")
def case():
    preds, targets = make_case()
    return preds, targets, run_metric(preds, targets)


@pytest.fixture(scope="module")
def case_ref(case):
    """pycocotools rows of ``case`` at maxDets index 0, 1, 2 (one slow evaluation, shared)."""
    return pycoco_rows(*case[:2], all_m=True)


# ----------------------------------------------------------------------------- tests
def test_case_is_nontrivial(case):
    preds, targets, _ = case
    assert len(preds) >= 6 and all(len(p["scores"]) > 100 for p in preds)
    areas = torch.cat([(t["boxes_xyxy"][:, 2:] - t["boxes_xyxy"][:, :2]).prod(1) for t in targets])
    assert (areas == 64).any() and all(((areas >= lo) & (areas <= hi)).any() for lo, hi in DEFAULT_AREA_RANGES.values())
    assert any(t["iscrowd"].any() for t in targets)


def test_equals_pycocotools(case, case_ref):
    preds, targets, got = case
    ref = case_ref[2]
    assert set(got) == set(ROW_KEYS)
    assert all(0 < ref[k] < 1 for k in ROW_KEYS)  # every row non-degenerate
    assert_rows_close(got, ref)


def test_class_metrics_and_custom_bins(case):
    preds, targets = case[0][1:5], case[1][1:5]  # a subset keeps the pycocotools run short
    bins = {"tiny": (0, 256), "big": (256, 1e10)}
    got = run_metric(preds, targets, area_ranges=bins, class_metrics=True)
    ref = pycoco_rows(preds, targets, area_ranges=bins)
    assert_rows_close(got, ref, keys=["AP", "AP_tiny", "AP_big", "AR_tiny", "AR_big"])
    # categories come from the GT only: label 4 appears in detections only and gets no row
    assert sorted(k for k in got if k.startswith("AP_class_")) == [f"AP_class_{i}" for i in range(4)]
    assert np.mean([got[f"AP_class_{i}"] for i in range(4)]) == pytest.approx(got["AP"], abs=1e-6)


def test_perfect_detections_and_empty_bin():
    boxes = torch.tensor([[0, 0, 4, 4], [10, 10, 20, 20], [50, 50, 70, 70]], dtype=torch.float32)  # vt, t, s
    targets = [{"boxes_xyxy": boxes, "labels": torch.tensor([0, 1, 0]), "image_id": 7}]
    preds = [{"boxes_xyxy": boxes.clone(), "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 0])}]
    got = run_metric(preds, targets)
    for k in ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AR", "AR_vt", "AR_t", "AR_s"]:
        assert got[k] == pytest.approx(1.0), k
    assert got["AP_m"] == -1 and got["AR_m"] == -1  # no GT in the medium bin: -1, not 0


def test_area_64_counts_in_vt_and_t():
    # one 8x8 GT (area 64) found, one 4x4 GT (vt) missed, one 12x12 GT (t) missed
    gt_boxes = torch.tensor([[0, 0, 8, 8], [100, 100, 104, 104], [200, 200, 212, 212]], dtype=torch.float32)
    targets = [{"boxes_xyxy": gt_boxes, "labels": torch.zeros(3, dtype=torch.int64), "image_id": 1}]
    preds = [{"boxes_xyxy": gt_boxes[:1].clone(), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    got = run_metric(preds, targets)
    # if 64 belonged to one bin only, the other bin would have recall 0 instead of 1/2
    assert got["AR_vt"] == pytest.approx(0.5) and got["AR_t"] == pytest.approx(0.5)
    assert_rows_close(got, pycoco_rows(preds, targets))


def test_duplicate_image_is_deduplicated(case):
    preds, targets, once = case
    metric = AITODMetric()
    metric.update(preds, targets)
    metric.update(preds[:2], targets[:2])  # padded sampler repeats the first images
    assert_rows_close({k: float(v) for k, v in metric.compute().items()}, once, tol=0)


def test_merge_state_like_ddp(case):
    preds, targets, single = case
    half = len(preds) // 2
    rank0, rank1 = AITODMetric(), AITODMetric()
    rank0.update(preds[:half], targets[:half])
    rank1.update(preds[half:] + preds[:1], targets[half:] + targets[:1])  # padded duplicate
    rank0.merge_state(rank1)
    assert_rows_close({k: float(v) for k, v in rank0.compute().items()}, single)


def _ddp_worker(rank, init_file, shards, queue):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = AITODMetric()
        for p, t in shards[rank]:
            metric.update(p, t)
        queue.put((rank, {k: float(v) for k, v in metric.compute().items()}))  # syncs via gather_all_tensors
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
@pytest.mark.timeout(180)
def test_real_gloo_ddp(case, tmp_path):
    preds, targets, single = case
    # uneven shards, rank 1 padded with a duplicate of image 0, several updates per rank
    shards = [
        [(preds[0:2], targets[0:2]), (preds[2:4], targets[2:4])],
        [(preds[4:7], targets[4:7]), (preds[7:] + preds[:1], targets[7:] + targets[:1])],
    ]
    # spawn, not fork: a forked child of a process whose torch thread pools already ran (any earlier
    # test) can hang inside gloo's collectives.
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, tmp_path / "store", shards, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for r in range(2):
        assert_rows_close(results[r], single)


def test_empty_inputs_do_not_crash():
    empty = {"boxes_xyxy": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    keys = ROW_KEYS
    with pytest.warns(UserWarning):
        assert all(v == -1 for v in run_metric([], []).values())  # no images at all
    # GT but zero detections anywhere: AP 0 where there is GT, -1 elsewhere
    gt = {"boxes_xyxy": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([0]), "image_id": 3}
    got = run_metric([empty], [gt])
    assert got["AP"] == 0 and got["AR_vt"] == 0 and got["AP_m"] == -1 and set(got) == set(keys)
    # no GT anywhere (only detections): all -1, with a warning
    no_gt = {"boxes_xyxy": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 4}
    det = {"boxes_xyxy": torch.tensor([[0.0, 0, 5, 5]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([0])}
    with pytest.warns(UserWarning):
        assert all(v == -1 for v in run_metric([det], [no_gt]).values())
    # mix: an image without detections and an image without GT next to a normal one
    boxes = torch.tensor([[10.0, 10, 30, 30]])
    normal_p = {"boxes_xyxy": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    normal_t = {"boxes_xyxy": boxes, "labels": torch.tensor([1]), "image_id": 5}
    preds, targets = [empty, det, normal_p], [gt, no_gt, normal_t]
    assert_rows_close(run_metric(preds, targets, chunk=1), pycoco_rows(preds, targets))


def test_max_dets_1500_is_used(case, case_ref):
    preds, targets, got = case
    dets_per_pair = max(torch.bincount(p["labels"]).max().item() for p in preds)
    assert dets_per_pair > 100  # some (image, class) pair has more than 100 detections
    at_100, at_1500 = case_ref[1], case_ref[2]
    for k in ["AP", "AP_vt", "AR"]:
        assert abs(got[k] - at_100[k]) > 1e-3, k  # reading the 100 column would be visibly wrong
        assert got[k] == pytest.approx(at_1500[k], abs=1e-6)
