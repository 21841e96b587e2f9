"""The embedded synthetic dataset: determinism, COCO validity, size mix, look, and multi-process safety."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tod_lightning.data.splits import CocoSplit
from tod_lightning.data.synthetic import (
    AREA_BINS,
    CLASS_NAMES,
    DONE_MARKER,
    SyntheticSpec,
    _draw_object,
    _sample_sides,
    ensure_synthetic_dataset,
    render_scene,
    size_histogram,
)

SMALL = SyntheticSpec(image_size=128, num_train=12, num_val=8, seed=3)


def _load(split: CocoSplit) -> dict:
    return json.loads(Path(split.ann_file).read_text())


def _read_rgb(split: CocoSplit, file_name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(Path(split.images_dir) / file_name)), cv2.COLOR_BGR2RGB)


def test_same_spec_gives_identical_dataset(tmp_path):
    a = ensure_synthetic_dataset(tmp_path / "a", SMALL)
    b = ensure_synthetic_dataset(tmp_path / "b", SMALL)
    assert set(a) == {"train", "val"}
    for split in a:
        assert Path(a[split].ann_file).read_bytes() == Path(b[split].ann_file).read_bytes()
        for img in _load(a[split])["images"]:
            assert np.array_equal(_read_rgb(a[split], img["file_name"]), _read_rgb(b[split], img["file_name"]))
    other = ensure_synthetic_dataset(tmp_path / "a", dataclasses.replace(SMALL, seed=4))
    assert other["train"].ann_file != a["train"].ann_file
    assert _load(other["train"])["annotations"] != _load(a["train"])["annotations"]


def test_split_sizes_do_not_change_other_splits(tmp_path):
    a = ensure_synthetic_dataset(tmp_path, SMALL)
    b = ensure_synthetic_dataset(tmp_path, dataclasses.replace(SMALL, num_train=3, num_test=2))
    assert set(b) == {"train", "val", "test"}
    assert _load(a["val"])["annotations"] == _load(b["val"])["annotations"]
    assert _load(a["train"])["annotations"] != _load(b["train"])["annotations"]


def test_fingerprint_is_stable_and_covers_fields():
    assert SyntheticSpec().fingerprint() == SyntheticSpec().fingerprint()
    assert SyntheticSpec(size_mix=[0.35, 0.45, 0.15, 0.05]).fingerprint() == SyntheticSpec().fingerprint()
    assert SyntheticSpec(num_val=61).fingerprint() != SyntheticSpec().fingerprint()
    with pytest.raises(ValueError):
        SyntheticSpec(num_classes=len(CLASS_NAMES) + 1)


def test_annotations_are_valid_coco(tmp_path):
    split = ensure_synthetic_dataset(tmp_path, SMALL)["train"]
    coco = _load(split)
    images = {img["id"]: img for img in coco["images"]}
    category_ids = {c["id"] for c in coco["categories"]}
    assert category_ids == set(range(1, SMALL.num_classes + 1))
    assert len(images) == SMALL.num_train and min(images) == 1
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) > 0
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(float(v).is_integer() for v in ann["bbox"])
        assert w >= 2 and h >= 2 and x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["area"] == w * h and ann["iscrowd"] == 0 and ann["category_id"] in category_ids
    for img in coco["images"]:
        assert _read_rgb(split, img["file_name"]).shape == (img["height"], img["width"], 3)
    from pycocotools.coco import COCO

    api = COCO(split.ann_file)
    assert len(api.getImgIds()) == SMALL.num_train and len(api.getAnnIds()) == len(coco["annotations"])


def test_boxes_do_not_overlap_heavily():
    for seed in range(3):
        _, anns = render_scene(np.random.default_rng(seed), SMALL, num_objects=120)
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float64)
        lt = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])
        rb = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
        area = np.prod(xyxy[:, 2:] - xyxy[:, :2], axis=1)
        iou = inter / (area[:, None] + area[None] - inter)
        np.fill_diagonal(iou, 0)
        assert iou.max() < 0.3


def test_default_size_mix_and_density(tmp_path):
    spec = SyntheticSpec(num_train=80, num_val=0)  # the DEFAULT proportions, fewer images
    hist = size_histogram(ensure_synthetic_dataset(tmp_path, spec)["train"].ann_file)
    assert hist["area_0_64"] >= 0.20
    assert hist["area_64_256"] >= 0.40
    assert 0 < hist["area_gt_1024"] < hist["area_256_1024"] < hist["area_0_64"]
    assert hist["empty_images"] >= 1 and hist["objects_per_image_min"] == 0
    assert hist["objects_per_image_max"] >= 100
    assert sum(hist[k] for k in ("area_0_64", "area_64_256", "area_256_1024", "area_gt_1024")) == pytest.approx(1)


def test_objects_fill_their_box():
    rng = np.random.default_rng(0)
    for cls in range(len(CLASS_NAMES)):
        for area_bin in range(len(AREA_BINS)):
            long, short = _sample_sides(rng, cls, area_bin)
            low, high = AREA_BINS[area_bin]
            assert low < long * short <= high and short >= 2
            _, alpha = _draw_object(rng, cls, long, short)
            assert alpha.shape == (short, long)
            # The box is the tight extent: every border row and column is touched by the shape.
            assert min(alpha[0].max(), alpha[-1].max(), alpha[:, 0].max(), alpha[:, -1].max()) > 0.1


def test_background_is_textured():
    for seed in range(4):
        img, anns = render_scene(np.random.default_rng(seed), SMALL, num_objects=0)
        assert anns == [] and img.shape == (128, 128, 3) and img.dtype == np.uint8
        grey = img.astype(np.float64).mean(axis=2)
        assert grey.std() > 8  # not flat
        assert np.abs(np.diff(grey, axis=1)).mean() > 1.5  # fine-grained texture, not only smooth shading
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000


def test_classes_differ_in_colour():
    spec = SyntheticSpec(num_classes=len(CLASS_NAMES))
    means: dict[int, list[np.ndarray]] = {k: [] for k in range(1, spec.num_classes + 1)}
    tiny_means: dict[int, list[np.ndarray]] = {k: [] for k in means}
    for seed in range(6):
        img, anns = render_scene(np.random.default_rng(seed), spec, num_objects=80)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            colour = img[y : y + h, x : x + w].reshape(-1, 3).mean(0)
            (tiny_means if ann["area"] <= 16 else means)[ann["category_id"]].append(colour)
    for table, margin in ((means, 40.0), (tiny_means, 25.0)):
        centres = {k: np.mean(v, axis=0) for k, v in table.items() if v}
        assert len(centres) >= 4
        for a in centres:
            for b in centres:
                if a < b:
                    assert np.linalg.norm(centres[a] - centres[b]) > margin, (a, b, centres[a], centres[b])


def _ensure_in_subprocess(root: str, barrier, results) -> None:
    """Spawned worker: wait for the others, call ensure, report the paths and whether it generated."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("tod_lightning.data.synthetic")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    barrier.wait(timeout=120)  # the imports take a while: start the three calls at the same moment
    splits = ensure_synthetic_dataset(root, SyntheticSpec(image_size=128, num_train=20, num_val=4, seed=1))
    paths = {k: dataclasses.astuple(v) for k, v in splits.items()}
    results.put((os.getpid(), paths, any("generated" in m for m in records)))


def test_concurrent_calls_generate_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    workers = [ctx.Process(target=_ensure_in_subprocess, args=(str(tmp_path), barrier, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    generators = [pid for pid, _, generated in reports if generated]
    assert len(generators) == 1
    assert all(paths == reports[0][1] for _, paths, _ in reports)
    (marker,) = tmp_path.glob(f"synthetic-*/{DONE_MARKER}")
    assert json.loads(marker.read_text())["pid"] == generators[0]
    assert not list(tmp_path.glob(".synthetic-*"))  # no temporary folder left behind


def test_half_written_generation_is_redone(tmp_path, caplog):
    splits = ensure_synthetic_dataset(tmp_path, SMALL)
    dataset_dir = Path(splits["train"].ann_file).parents[1]
    reference = Path(splits["train"].ann_file).read_bytes()
    # Simulate a crash: marker missing, one image gone, a stale temporary folder next to it.
    (dataset_dir / DONE_MARKER).unlink()
    (Path(splits["train"].images_dir) / "000000.png").unlink()
    stale = tmp_path / f".{dataset_dir.name}.tmp-crashed"
    stale.mkdir()
    (stale / "junk.png").write_bytes(b"not a png")
    with caplog.at_level(logging.INFO, logger="tod_lightning.data.synthetic"):
        again = ensure_synthetic_dataset(tmp_path, SMALL)
    assert again == splits
    assert any("generated" in r.getMessage() for r in caplog.records)
    assert (dataset_dir / DONE_MARKER).is_file() and not stale.exists()
    assert (Path(splits["train"].images_dir) / "000000.png").is_file()
    assert Path(splits["train"].ann_file).read_bytes() == reference
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tod_lightning.data.synthetic"):
        ensure_synthetic_dataset(tmp_path, SMALL)  # finished now: nothing is generated
    assert not any("generated" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- large scenes: (height, width) frames, density
def test_existing_specs_keep_their_fingerprint_and_files(tmp_path):
    # Values computed before ``image_size`` pairs and ``density_side`` existed: the cache folders stay valid.
    assert SyntheticSpec().fingerprint() == "4dea2ca1c3"
    assert SMALL.fingerprint() == "9432be2fa8"
    assert "density_side" not in SMALL.as_dict()
    info = _load(ensure_synthetic_dataset(tmp_path, SMALL)["val"])["info"]
    assert info["fingerprint"] == "9432be2fa8" and "density_side" not in info["spec"]
    assert SyntheticSpec(density_side=256).fingerprint() != SyntheticSpec().fingerprint()
    assert SyntheticSpec(image_size=(256, 256)).fingerprint() != SyntheticSpec().fingerprint()


def test_image_size_can_be_height_width(tmp_path):
    spec = SyntheticSpec(image_size=[48, 160], num_train=3, num_val=1, seed=2, max_objects=6)  # configs give lists
    assert spec.image_size == (48, 160) and spec.frame_hw == (48, 160)
    split = ensure_synthetic_dataset(tmp_path, spec)["train"]
    coco = _load(split)
    assert [(img["height"], img["width"]) for img in coco["images"]] == [(48, 160)] * 3
    assert coco["info"]["spec"]["image_size"] == [48, 160]
    for img in coco["images"]:
        assert _read_rgb(split, img["file_name"]).shape == (48, 160, 3)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x + w <= 160 and y + h <= 48
    assert any(ann["bbox"][0] + ann["bbox"][2] > 48 for ann in coco["annotations"])  # the whole width is used
    for bad in ((31, 100), (64, 64, 64)):
        with pytest.raises(ValueError, match="image_size"):
            SyntheticSpec(image_size=bad)


@pytest.mark.parametrize(("density_side", "expected"), [(None, 3), (40, 3 * 4), (32, round(3 * 40 * 160 / 32**2))])
def test_density_side_scales_object_counts_with_the_frame_area(tmp_path, density_side, expected):
    """dense_min = dense_max = 3 objects per density_side² px: a 40 x 160 px frame requests 3 x its area ratio."""
    spec = SyntheticSpec(
        image_size=(40, 160),
        num_train=2,
        num_val=0,
        empty_fraction=0.0,
        dense_fraction=1.0,
        dense_min=3,
        dense_max=3,
        size_mix=(1.0, 0.0, 0.0, 0.0),  # <= 8 x 8 px: every requested object finds a free spot
        density_side=density_side,
    )
    hist = size_histogram(ensure_synthetic_dataset(tmp_path, spec)["train"].ann_file)
    assert hist["objects_per_image_min"] == hist["objects_per_image_max"] == expected
    with pytest.raises(ValueError, match="density_side"):
        SyntheticSpec(density_side=0)
