"""Bad input, strict vs lenient (docs/data/bad_input.md): every kind of bad record or file either raises an error
naming the file and the record (``strict=True``) or is skipped, counted and reported at the end of the run
(``strict=False``); a file with nothing to skip to raises in both modes."""

from __future__ import annotations

import copy
import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_cli import fit_tiny

from tod_lightning.data import AnnotationError, CocoSplit, DetectionDataModule, read_coco
from tod_lightning.data.dataset import ImageReadError
from tod_lightning.data.problems import (
    BOX_OUTSIDE_IMAGE,
    DUPLICATE_CATEGORY_ID,
    DUPLICATE_IMAGE_ID,
    MALFORMED_RECORD,
    NON_FINITE_BOX,
    NON_POSITIVE_BOX,
    UNKNOWN_CATEGORY,
    UNKNOWN_IMAGE_ID,
)

CATEGORIES = [{"id": 1, "name": "car"}, {"id": 5, "name": "person"}]
SIZE = 32  # every image is SIZE x SIZE px


def _clean_coco(size: int = SIZE) -> dict:
    """Four ``size`` x ``size`` images: a.png with two objects, b.png with one, c.png with none, d.png with one."""
    images = [{"id": i, "file_name": f"{n}.png", "width": size, "height": size} for i, n in enumerate("abcd", 1)]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5], "area": 20.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [10, 10, 6, 2], "area": 12.0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [0, 0, 3, 3], "area": 9.0, "iscrowd": 0},
        {"id": 4, "image_id": 4, "category_id": 1, "bbox": [20, 25, 10, 5], "area": 50.0, "iscrowd": 0},
    ]
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(CATEGORIES)}


def _write(root: Path, coco: dict) -> CocoSplit:
    """The json and one distinct image per record (pixel value 10 * image id, so each can be recognised)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for image in coco["images"]:
        pixels = np.full((image["height"], image["width"], 3), 10 * image["id"], np.uint8)
        cv2.imwrite(str(images_dir / image["file_name"]), pixels)
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(coco))  # NaN is written as the JSON extension NaN, which json.loads reads
    return CocoSplit(str(images_dir), str(ann_file))


def _bad_annotation(ann_id: int, **changes) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16.0, "iscrowd": 0, **changes}


# (what is added to the clean dataset, the problem kind, the record the message names)
BAD_RECORDS = {
    "box_outside_image": (_bad_annotation(100, bbox=[40, 1, 4, 4]), BOX_OUTSIDE_IMAGE, "annotation id=100"),
    "zero_width": (_bad_annotation(101, bbox=[1, 1, 0, 4]), NON_POSITIVE_BOX, "annotation id=101"),
    "negative_height": (_bad_annotation(102, bbox=[1, 1, 4, -2]), NON_POSITIVE_BOX, "annotation id=102"),
    "unknown_category": (_bad_annotation(103, category_id=9), UNKNOWN_CATEGORY, "annotation id=103"),
    "nan_coordinate": (_bad_annotation(104, bbox=[1, float("nan"), 4, 4]), NON_FINITE_BOX, "annotation id=104"),
    "unknown_image_id": (_bad_annotation(105, image_id=42), UNKNOWN_IMAGE_ID, "annotation id=105"),
    "bbox_not_4_numbers": (_bad_annotation(106, bbox=[1, 1, 4]), MALFORMED_RECORD, "annotation id=106"),
    "duplicate_image_id": (
        {"id": 2, "file_name": "other.png", "width": SIZE, "height": SIZE},
        DUPLICATE_IMAGE_ID,
        "image id=2",
    ),
}


def _with(bad: dict) -> dict:
    coco = _clean_coco()
    coco["images" if "file_name" in bad else "annotations"].append(copy.deepcopy(bad))
    return coco


def _records(annotations, crowd: bool = False) -> list[tuple]:
    """Per image: id, file, and the boxes, labels, areas and ids of its objects (``crowd``: ignore regions)."""
    out = []
    for i in annotations.images:
        keep = i.iscrowd == crowd
        arrays = (i.boxes_xyxy[keep], i.labels[keep], i.areas[keep], i.ann_ids[keep])
        out.append((i.image_id, i.file_name, *(a.tolist() for a in arrays)))
    return out


# What lenient mode does with each kind (the ``action`` of its problem).
ACTIONS = {DUPLICATE_IMAGE_ID: "skipped image", UNKNOWN_CATEGORY: "made an ignore region"}


@pytest.mark.parametrize("via", ["read_coco", "datamodule"])
@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_strict_raises_naming_the_file_and_the_record(tmp_path, name, via):
    bad, _, record = BAD_RECORDS[name]
    split = _write(tmp_path, _with(bad))
    with pytest.raises(AnnotationError) as error:
        if via == "read_coco":
            read_coco(split.ann_file, strict=True)
        else:
            DetectionDataModule(train=split, strict=True, num_workers=0).setup("fit")
    assert str(error.value).startswith(f"{split.ann_file}: {record}: ")


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_lenient_skips_and_counts_and_keeps_the_good_records(tmp_path, name):
    bad, kind, record = BAD_RECORDS[name]
    clean = read_coco(str(_write(tmp_path / "clean", _clean_coco()).ann_file))
    split = _write(tmp_path / "bad", _with(bad))
    annotations = read_coco(split.ann_file, strict=False)
    assert annotations.problems.counts() == {kind: 1}
    (problem,) = annotations.problems
    assert problem.where == f"{split.ann_file}: {record}"
    assert problem.action == ACTIONS.get(kind, "skipped annotation")
    assert _records(annotations) == _records(clean)  # the good objects, boxes and all, exactly as without it
    if kind == UNKNOWN_CATEGORY:  # an object of an unknown class: its usable box is ignored, not background
        assert _records(annotations, crowd=True)[0] == (1, "a.png", [[1, 1, 5, 5]], [-1], [16.0], [103])
        assert annotations.summary()["ignore_regions"] == 1
    else:
        assert _records(annotations, crowd=True) == _records(clean, crowd=True)
        assert annotations.summary()["skipped_records"] == 1


def test_lenient_counts_every_bad_record_of_a_file(tmp_path):
    coco = _clean_coco()
    for bad, _, _ in BAD_RECORDS.values():
        coco["images" if "file_name" in bad else "annotations"].append(copy.deepcopy(bad))
    coco["annotations"].append(_bad_annotation(107, category_id=77))  # a second unknown category
    split = _write(tmp_path, coco)
    annotations = read_coco(split.ann_file, strict=False)
    assert annotations.problems.counts() == {
        DUPLICATE_IMAGE_ID: 1,
        BOX_OUTSIDE_IMAGE: 1,
        NON_POSITIVE_BOX: 2,
        UNKNOWN_CATEGORY: 2,
        NON_FINITE_BOX: 1,
        UNKNOWN_IMAGE_ID: 1,
        MALFORMED_RECORD: 1,
    }
    clean = read_coco(str(_write(tmp_path / "clean", _clean_coco()).ann_file))
    assert _records(annotations) == _records(clean)
    assert [i.boxes_xyxy[~i.iscrowd].tolist() for i in annotations.images] == [
        [[2, 3, 6, 8], [10, 10, 16, 12]],
        [[0, 0, 3, 3]],
        [],
        [[20, 25, 30, 30]],
    ]
    # the two objects of unknown categories became ignore regions of every class; the 7 others were skipped
    assert _records(annotations, crowd=True)[0][2:] == ([[1, 1, 5, 5]] * 2, [-1, -1], [16.0] * 2, [103, 107])
    assert annotations.summary()["skipped_records"] == 7


def _broken_images(tmp_path: Path) -> CocoSplit:
    split = _write(tmp_path, _clean_coco())
    Path(split.images_dir, "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # corrupt
    Path(split.images_dir, "c.png").unlink()  # missing
    return split


def _loader(split: CocoSplit, strict: bool, num_workers: int):
    dm = DetectionDataModule(
        val=split, strict=strict, num_workers=num_workers, eval_batch_size=2, persistent_workers=False, size_divisor=1
    )
    return dm.val_dataloader()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_lenient_loader_drops_unreadable_images_and_carries_their_messages(tmp_path, num_workers):
    split = _broken_images(tmp_path)
    batches = list(_loader(split, strict=False, num_workers=num_workers))
    assert len(batches) == 2  # [a, b] and [c, d], each left with one image
    assert [b.file_names for b in batches] == [["a.png"], ["d.png"]]
    path_b, path_c = (str(Path(split.images_dir, n)) for n in ("b.png", "c.png"))
    assert batches[0].skipped == [f"cannot read image {path_b}: corrupt or not an image [corrupt_image; skipped image]"]
    assert batches[1].skipped == [f"cannot read image {path_c}: file not found [missing_image; skipped image]"]
    # the images that arrive are intact: their own pixels (10 * image id), their own boxes
    for batch, image_id, boxes_xyxy in zip(batches, (1, 4), ([[2, 3, 6, 8], [10, 10, 16, 12]], [[20, 25, 30, 30]])):
        assert batch.images.shape == (1, 3, SIZE, SIZE)
        assert (batch.images == 10 * image_id).all()
        assert batch.targets[0].image_id == image_id
        assert batch.targets[0].boxes_xyxy.tolist() == boxes_xyxy


@pytest.mark.parametrize("num_workers", [0, 2])
def test_strict_loader_raises_naming_the_file_and_the_image_id(tmp_path, num_workers):
    split = _broken_images(tmp_path)
    with pytest.raises(Exception) as error:
        list(_loader(split, strict=True, num_workers=num_workers))
    assert f"cannot read image {Path(split.images_dir, 'b.png')}: corrupt or not an image (image id=2)" in str(
        error.value
    )
    if num_workers == 0:
        assert isinstance(error.value, ImageReadError) and error.value.kind == "corrupt_image"


def test_strict_loader_error_keeps_its_type_through_worker_processes(tmp_path):
    split = _broken_images(tmp_path)
    with pytest.raises(ImageReadError, match="b.png"):
        list(_loader(split, strict=True, num_workers=2))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("{not json", "not valid JSON"),
        (json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}), "the 'images' list is empty"),
    ],
    ids=["zero_bytes", "malformed", "no_images"],
)
@pytest.mark.parametrize("strict", [True, False])
def test_a_file_with_nothing_to_skip_to_raises_in_both_modes(tmp_path, text, message, strict):
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(text)
    assert ann_file.stat().st_size == len(text)
    with pytest.raises(AnnotationError, match=f"^{ann_file}: {message}"):
        read_coco(str(ann_file), strict=strict)
    with pytest.raises(AnnotationError, match=f"^{ann_file}: {message}"):
        DetectionDataModule(train=CocoSplit(str(tmp_path), str(ann_file)), strict=strict, num_workers=0).setup("fit")


@pytest.mark.parametrize("strict", [True, False])
def test_unhashable_image_id_is_a_malformed_record(tmp_path, strict):
    split = _write(tmp_path, _with(_bad_annotation(108, image_id=[1])))
    if strict:
        with pytest.raises(AnnotationError, match="annotation id=108"):
            read_coco(split.ann_file, strict=True)
    else:
        assert len(read_coco(split.ann_file, strict=False).problems) == 1


@pytest.mark.parametrize("via", ["read_coco", "datamodule"])
def test_lenient_duplicate_category_id_is_skipped_and_counted(tmp_path, via):
    coco = _clean_coco()
    coco["categories"].append({"id": 5, "name": "person again"})
    split = _write(tmp_path, coco)
    if via == "read_coco":
        problems = read_coco(split.ann_file, strict=False).problems
    else:
        dm = DetectionDataModule(train=split, strict=False, num_workers=0)
        dm.setup("fit")
        problems = dm.datasets["train"].problems
    assert [(p.kind, p.where) for p in problems] == [(DUPLICATE_CATEGORY_ID, f"{split.ann_file}: category id=5")]


def test_negative_area_is_reported(tmp_path):
    split = _write(tmp_path, _with(_bad_annotation(109, area=-16.0)))
    annotations = read_coco(split.ann_file, strict=False)
    assert [p.where for p in annotations.problems] == [f"{split.ann_file}: annotation id=109"]


def test_cli_fit_with_strict_false_completes_and_reports_the_skips(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    coco = _clean_coco(size=64)  # a batch left with one image must still have > 1 value per channel at stride 32
    coco["annotations"].append(_bad_annotation(110, category_id=9))  # one bad record
    split = _write(tmp_path / "data", coco)
    Path(split.images_dir, "b.png").write_bytes(b"not an image")  # one corrupt image
    data_args = []
    for name in ("train", "val"):  # the same split for both: the corrupt image is met twice, counted once
        data_args += [
            f"--data.{name}=tod_lightning.data.CocoSplit",
            f"--data.{name}.images_dir={split.images_dir}",
            f"--data.{name}.ann_file={split.ann_file}",
        ]
    # A CSV logger instead of W&B: the same log_metrics calls, written to a file this test reads back.
    logger_args = ("--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}")
    cli = fit_tiny(tmp_path, extra=(*data_args, "--data.synthetic=null", "--data.strict=false", *logger_args))
    assert cli.trainer.state.finished and cli.trainer.global_step == 2  # ceil(4 / 3) batches, one short an image
    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv", newline="") as f:
        rows = [{k: v for k, v in row.items() if k.startswith("data/") and v} for row in csv.DictReader(f)]
    # logged once, at the end of fit: the corrupt image (met in train and val) once, one bad record per split
    assert [row for row in rows if row] == [
        {"data/skipped_images": "1.0", "data/problems_train": "1.0", "data/problems_val": "1.0"}
    ]
    assert cli.datamodule.datasets["train"].problems.counts() == {UNKNOWN_CATEGORY: 1}
    # ... and printed, naming the file and the record
    (report,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Bad input report")]
    assert f"{split.ann_file}: annotation id=110: unknown category_id=9" in report
    assert f"images skipped while loading: 1\n  cannot read image {split.images_dir}/b.png" in report
