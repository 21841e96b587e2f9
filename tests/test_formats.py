"""Dataset formats: VisDrone-DET txt and YOLO txt (reading, round trips, ignore regions, bad records), COCO round
trips, cross-format conversion, the metric's ignore-region rule, the data recipes and a tiny CLI run on VisDrone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_cli import ROOT, quiet_trainer_args

from tod_lightning.cli import main as cli_main
from tod_lightning.data import (
    AnnotationError,
    DetectionDataset,
    SyntheticSpec,
    VisDroneSplit,
    YoloSplit,
    ensure_synthetic_dataset,
    read_coco,
    read_visdrone,
    read_yolo,
    write_coco,
    write_visdrone,
    write_yolo,
)
from tod_lightning.data.problems import (
    BOX_CLIPPED,
    BOX_OUTSIDE_IMAGE,
    CORRUPT_IMAGE,
    MALFORMED_RECORD,
    MISSING_IMAGE,
    NO_ANNOTATIONS,
    NON_FINITE_BOX,
    NON_POSITIVE_BOX,
    UNKNOWN_CATEGORY,
)
from tod_lightning.data.records import ANY_CLASS
from tod_lightning.data.synthetic import CLASS_NAMES
from tod_lightning.data.visdrone import VISDRONE_CLASSES
from tod_lightning.metrics import AITODMetric

# Image "a.jpg" is 80x60 (w x h), "b.png" 50x40.
SIZES = {"a.jpg": (60, 80), "b.png": (40, 50)}
VISDRONE_A = (
    "10,12,6,4,1,4,0,1\n"  # car
    "30,20,20,15,0,0,0,0\n"  # ignored region (category 0)
    "2,3,5,5,1,1,1,2\n"  # pedestrian, truncated and occluded
    "50,40,8,8,1,11,0,0\n"  # others (category 11)
    "60,5,4,3,0,10,0,0\n"  # a motor with score 0: ignored by the toolkit -> a crowd of its class
)
VISDRONE_B = "0,0,3,2,1,9,0,0\n"  # bus
YOLO_CLASSES = ("vehicle", "person")
YOLO_A = "1 0.5 0.5 0.25 0.1\n0 0.1 0.2 0.05 0.1\n"  # exact in pixels: [30, 27, 50, 33], [6, 9, 10, 15]
YOLO_B = "0 0.5 0.5 0.2 0.25\n"  # [20, 15, 30, 25]


def _images(images_dir: Path, sizes: dict[str, tuple[int, int]] = SIZES) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images_dir / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _split(tmp_path: Path, fmt: str, files: dict[str, str]) -> VisDroneSplit | YoloSplit:
    """Images of SIZES and the txt ``files`` (``{name: text}``) of format ``fmt`` under ``tmp_path``."""
    _images(tmp_path / "images")
    txt_dir = tmp_path / "labels"
    txt_dir.mkdir(exist_ok=True)
    for name, text in files.items():
        (txt_dir / name).write_text(text)
    if fmt == "visdrone":
        return VisDroneSplit(str(tmp_path / "images"), str(txt_dir))
    return YoloSplit(str(tmp_path / "images"), str(txt_dir), list(YOLO_CLASSES))


# ------------------------------------------------------------------------------------------ reading
def test_visdrone_read(tmp_path):
    split = _split(tmp_path, "visdrone", {"a.txt": VISDRONE_A, "b.txt": VISDRONE_B})
    assert VisDroneSplit("nowhere", "nowhere").categories() == (list(range(1, 11)), list(VISDRONE_CLASSES))
    ann = split.load()
    assert ann.category_ids == list(range(1, 11)) and ann.class_names == list(VISDRONE_CLASSES)
    assert len(ann.problems) == 0 and ann.source == split.annotations_dir
    a, b = ann.images
    assert (a.image_id, a.file_name, a.height, a.width) == (1, "a.jpg", 60, 80)  # size from the header
    assert (b.image_id, b.file_name, b.height, b.width) == (2, "b.png", 40, 50)
    np.testing.assert_array_equal(
        a.boxes_xyxy, [[10, 12, 16, 16], [30, 20, 50, 35], [2, 3, 7, 8], [50, 40, 58, 48], [60, 5, 64, 8]]
    )
    np.testing.assert_array_equal(a.labels, [3, -1, 0, -1, 9])  # 0 and 11: class-agnostic; score 0: its class
    np.testing.assert_array_equal(a.iscrowd, [False, True, False, True, True])
    np.testing.assert_array_equal(a.areas, [24, 300, 25, 64, 12])
    np.testing.assert_array_equal(a.ann_ids, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(a.extra["category"], [4, 0, 1, 11, 10])
    np.testing.assert_array_equal(a.extra["score"], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(a.extra["truncation"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(a.extra["occlusion"], [1, 0, 2, 0, 0])
    assert a.num_objects == 2 and ann.summary()["ignore_regions"] == 3
    np.testing.assert_array_equal(b.labels, [8])

    # What training sees: objects as targets, the three ignore regions as ignore_xyxy, -1 kept for evaluation.
    sample = DetectionDataset(ann, split.images_dir)[0]
    np.testing.assert_array_equal(sample["boxes_xyxy"], [[10, 12, 16, 16], [2, 3, 7, 8]])
    np.testing.assert_array_equal(sample["ignore_xyxy"], [[30, 20, 50, 35], [50, 40, 58, 48], [60, 5, 64, 8]])
    np.testing.assert_array_equal(sample["orig_labels"], [3, -1, 0, -1, 9])


def test_visdrone_custom_classes_and_tolerated_syntax(tmp_path):
    """Trailing commas, blank lines and CRLF are read; a category beyond K is unknown; ignore_categories is a choice."""
    text = "\r\n10,12,6,4,1,2,0,0,\r\n\r\n2,3,5,5,1,11,0,0,\r\n"
    split = VisDroneSplit(**{**vars(_split(tmp_path, "visdrone", {"a.txt": text})), "class_names": ["x", "y"]})
    assert split.categories() == ([1, 2], ["x", "y"])
    a = split.load().images[0]
    np.testing.assert_array_equal(a.labels, [1, -1])
    np.testing.assert_array_equal(a.ann_ids, [2, 4])  # line numbers count the blank lines
    only_zero = VisDroneSplit(split.images_dir, split.annotations_dir, ["x", "y"], ignore_categories=[0])
    with pytest.raises(AnnotationError, match=re.escape(f"{split.annotations_dir}/a.txt:4: unknown category")):
        only_zero.load()
    with pytest.raises(ValueError, match="also object categories"):
        VisDroneSplit("i", "a", class_names=VISDRONE_CLASSES + ("extra",))  # category 11 both object and ignored


def test_yolo_read(tmp_path):
    split = _split(tmp_path, "yolo", {"a.txt": YOLO_A, "b.txt": YOLO_B})
    assert split.categories() == ([0, 1], list(YOLO_CLASSES))
    ann = split.load()
    assert ann.category_ids == [0, 1] and len(ann.problems) == 0
    a, b = ann.images
    assert (a.image_id, a.height, a.width, b.image_id, b.height, b.width) == (1, 60, 80, 2, 40, 50)
    np.testing.assert_allclose(a.boxes_xyxy, [[30, 27, 50, 33], [6, 9, 10, 15]], atol=1e-5)
    np.testing.assert_array_equal(a.labels, [1, 0])
    np.testing.assert_allclose(a.areas, [120, 24], rtol=1e-5)
    np.testing.assert_array_equal(a.ann_ids, [1, 2])
    assert not a.iscrowd.any() and a.iscrowd.shape == (2,)
    np.testing.assert_allclose(b.boxes_xyxy, [[20, 15, 30, 25]], atol=1e-5)


# ------------------------------------------------------------------------------------------ round trips
def test_visdrone_round_trip_is_byte_identical(tmp_path):
    split = _split(tmp_path, "visdrone", {"a.txt": VISDRONE_A, "b.txt": VISDRONE_B})
    out = tmp_path / "written"
    write_visdrone(split.load(), str(out))
    for name in ("a.txt", "b.txt"):
        assert (out / name).read_bytes() == (Path(split.annotations_dir) / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]


def test_yolo_round_trip(tmp_path):
    text_a = "1 0.512345 0.487654 0.123457 0.0987650\n0 0.1 0.2 0.05 0.1\n"
    split = _split(tmp_path, "yolo", {"a.txt": text_a, "b.txt": YOLO_B})
    first = split.load()
    assert write_yolo(first, str(tmp_path / "written")) == 0
    second = read_yolo(split.images_dir, str(tmp_path / "written"), YOLO_CLASSES)
    for x, y in zip(first.images, second.images, strict=True):
        assert (x.image_id, x.file_name, x.height, x.width) == (y.image_id, y.file_name, y.height, y.width)
        np.testing.assert_allclose(x.boxes_xyxy, y.boxes_xyxy, atol=1e-6 * x.width)
        for key in ("labels", "iscrowd", "ann_ids"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key))
    # the written normalised values are within 1e-6 of the original ones
    original = np.loadtxt(Path(split.labels_dir) / "a.txt")
    written = np.loadtxt(tmp_path / "written" / "a.txt")
    np.testing.assert_allclose(written, original, atol=1e-6, rtol=0)


def _assert_same(x_set, y_set, objects_only: bool = False):
    for x, y in zip(x_set.images, y_set.images, strict=True):
        assert (x.image_id, x.file_name, x.height, x.width) == (y.image_id, y.file_name, y.height, y.width)
        np.testing.assert_allclose(x.boxes_xyxy, y.boxes_xyxy, atol=1e-6)
        np.testing.assert_array_equal(x.iscrowd, y.iscrowd)
        objects = ~x.iscrowd if objects_only else slice(None)
        np.testing.assert_array_equal(x.labels[objects], y.labels[objects])


def test_coco_round_trip(tmp_path):
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 60, "width": 80}, {"id": 9, "file_name": "b.png",
                   "height": 40, "width": 50}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10.5, 12, 6, 4.25], "area": 25.5, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 2, "bbox": [30, 20, 20, 15], "area": 300.0, "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "car"}, {"id": 2, "name": "person"}],
    }  # fmt: skip
    (tmp_path / "in.json").write_text(json.dumps(coco))
    first = read_coco(str(tmp_path / "in.json"))
    write_coco(first, str(tmp_path / "out.json"))
    second = read_coco(str(tmp_path / "out.json"))
    assert (second.category_ids, second.class_names) == ([2, 5], ["person", "car"])
    _assert_same(first, second)
    np.testing.assert_array_equal(second.images[0].labels, [1, 0])
    np.testing.assert_array_equal(second.images[0].areas, [25.5, 300.0])
    np.testing.assert_array_equal(second.images[0].ann_ids, [1, 4])


def test_visdrone_to_coco_to_yolo(tmp_path):
    split = _split(tmp_path, "visdrone", {"a.txt": VISDRONE_A, "b.txt": VISDRONE_B})
    visdrone = split.load()
    write_coco(visdrone, str(tmp_path / "visdrone.json"))
    coco = read_coco(str(tmp_path / "visdrone.json"))
    assert (coco.category_ids, coco.class_names) == (visdrone.category_ids, visdrone.class_names)
    # Objects survive as they are. COCO has no class-agnostic record and matches crowds within a category,
    # so each class-agnostic region becomes one crowd per category; a crowd of one class stays one record.
    num_classes = len(VISDRONE_CLASSES)
    for x, y in zip(visdrone.images, coco.images, strict=True):
        objects_x, objects_y = ~x.iscrowd, ~y.iscrowd
        np.testing.assert_allclose(x.boxes_xyxy[objects_x], y.boxes_xyxy[objects_y], atol=1e-6)
        np.testing.assert_array_equal(x.labels[objects_x], y.labels[objects_y])
        expected = []
        for box, label in zip(x.boxes_xyxy[x.iscrowd].tolist(), x.labels[x.iscrowd].tolist()):
            expected += [(tuple(box), c) for c in (range(num_classes) if label == ANY_CLASS else [label])]
        got = [(tuple(b), c) for b, c in zip(y.boxes_xyxy[y.iscrowd].tolist(), y.labels[y.iscrowd].tolist())]
        assert sorted(got) == sorted(expected)
    # Every record keeps its id (line number); the extra copies of an agnostic region get new ids.
    assert {1, 2, 3, 4, 5} <= set(coco.images[0].ann_ids.tolist())
    assert len(set(coco.images[0].ann_ids.tolist())) == len(coco.images[0].ann_ids)
    # ... back to VisDrone (a crowd of one class is written as score 0, read back as a crowd of that class) ...
    write_visdrone(coco, str(tmp_path / "back"))
    _assert_same(coco, read_visdrone(split.images_dir, str(tmp_path / "back")))
    # ... and on to YOLO, which has no ignore regions at all: they are counted, not written.
    assert write_yolo(coco, str(tmp_path / "yolo")) == sum(int(i.iscrowd.sum()) for i in coco.images)
    yolo = read_yolo(split.images_dir, str(tmp_path / "yolo"), VISDRONE_CLASSES)
    np.testing.assert_allclose(yolo.images[0].boxes_xyxy, visdrone.images[0].boxes_xyxy[[0, 2]], atol=1e-4)
    np.testing.assert_array_equal(yolo.images[0].labels, [3, 0])


# ------------------------------------------------------------------------------------------ bad records
GOOD = {"visdrone": ("10,10,5,5,1,4,0,0", "20,20,6,6,1,1,0,0"), "yolo": ("1 0.5 0.5 0.1 0.1", "0 0.2 0.2 0.1 0.1")}
BAD = [
    ("visdrone", "1,2,3", MALFORMED_RECORD),  # wrong column count
    ("visdrone", "1,2,x,4,1,1,0,0", MALFORMED_RECORD),  # non-numeric
    ("visdrone", "nan,2,3,4,1,1,0,0", NON_FINITE_BOX),
    ("visdrone", "1.5,2,3,4,1,1,0,0", MALFORMED_RECORD),  # non-integer
    ("visdrone", "1,2,3,4,1,nan,0,0", MALFORMED_RECORD),  # non-finite category
    ("visdrone", "1,2,0,4,1,1,0,0", NON_POSITIVE_BOX),
    ("visdrone", "1,2,3,-4,0,0,0,0", NON_POSITIVE_BOX),  # ignore regions are checked too
    ("visdrone", "100,2,3,4,1,1,0,0", BOX_OUTSIDE_IMAGE),  # the image is 80 px wide
    ("visdrone", "1,2,3,4,1,12,0,0", UNKNOWN_CATEGORY),
    ("yolo", "0 0.5 0.5 0.1", MALFORMED_RECORD),
    ("yolo", "0 0.5 abc 0.1 0.1", MALFORMED_RECORD),
    ("yolo", "0 nan 0.5 0.1 0.1", NON_FINITE_BOX),
    ("yolo", "0.5 0.5 0.5 0.1 0.1", MALFORMED_RECORD),  # non-integer class
    ("yolo", "2 0.5 0.5 0.1 0.1", UNKNOWN_CATEGORY),  # two classes: 0, 1
    ("yolo", "-1 0.5 0.5 0.1 0.1", UNKNOWN_CATEGORY),
    ("yolo", "0 0.5 0.5 0 0.1", NON_POSITIVE_BOX),
    ("yolo", "0 1.5 0.5 0.2 0.1", BOX_OUTSIDE_IMAGE),
]


@pytest.mark.parametrize(("fmt", "line", "kind"), BAD, ids=[f"{f}-{k}-{i}" for i, (f, _, k) in enumerate(BAD)])
def test_bad_record(tmp_path, fmt, line, kind):
    text = f"{GOOD[fmt][0]}\n{line}\n{GOOD[fmt][1]}\n"
    split = _split(tmp_path, fmt, {"a.txt": text, "b.txt": ""})
    with pytest.raises(AnnotationError, match=re.escape(f"{tmp_path / 'labels' / 'a.txt'}:2: ")) as error:
        split.load(strict=True)
    assert repr(line) in str(error.value)  # the message quotes the record
    ann = split.load(strict=False)
    assert ann.problems.counts() == {kind: 1}
    a = ann.images[0]
    if kind == UNKNOWN_CATEGORY:  # an object of an unknown class: an ignore region (as in COCO), not background
        assert next(iter(ann.problems)).action == "made an ignore region"
        np.testing.assert_array_equal(a.ann_ids, [1, 2, 3])
        assert a.labels[1] == ANY_CLASS and a.iscrowd.tolist() == [False, True, False]
        assert len(ann.images) == 2
        if fmt == "visdrone":  # written back with its own category: the file round-trips byte for byte
            write_visdrone(ann, str(tmp_path / "out"))
            assert (tmp_path / "out" / "a.txt").read_text() == text
        else:  # YOLO cannot hold an ignore region: the writer leaves it out and says how many
            assert write_yolo(ann, str(tmp_path / "out")) == 1
        return
    np.testing.assert_array_equal(a.ann_ids, [1, 3])  # the good records are read
    assert len(a.boxes_xyxy) == 2 and len(ann.images) == 2


@pytest.mark.parametrize(
    ("fmt", "line", "expected_xyxy"),
    [("visdrone", "70,50,20,20,1,4,0,0", [70, 50, 80, 60]), ("yolo", "1 0.95 0.5 0.2 0.1", [68, 27, 80, 33])],
)
def test_box_partly_outside_is_clipped_and_counted(tmp_path, fmt, line, expected_xyxy):
    split = _split(tmp_path, fmt, {"a.txt": f"{GOOD[fmt][0]}\n{line}\n", "b.txt": ""})
    for strict in (True, False):  # a fix, not an error: never raised
        ann = split.load(strict=strict)
        assert ann.problems.counts() == {BOX_CLIPPED: 1}
        assert next(iter(ann.problems)).where == f"{split.source}/a.txt:2"
        np.testing.assert_allclose(ann.images[0].boxes_xyxy[1], expected_xyxy, atol=1e-5)


def test_yolo_rounding_overshoot_is_not_a_clip(tmp_path):
    # 6-decimal files put a border-touching box ~1e-6 past the border: clipped silently, not reported
    split = _split(tmp_path, "yolo", {"a.txt": "0 0.9 0.5 0.200002 0.1\n", "b.txt": "", "classes.txt": "a\nb\n"})
    ann = split.load(strict=True)  # classes.txt (labelImg's class list) without an image is not an error
    assert ann.problems.counts() == {"malformed_file": 1}
    assert ann.images[0].boxes_xyxy[0, 2] == 80.0


@pytest.mark.parametrize("fmt", ["visdrone", "yolo"])
def test_folder_problems(tmp_path, fmt):
    files = {"a.txt": f"{GOOD[fmt][0]}\n", "b.txt": f"{GOOD[fmt][1]}\n"}
    # an annotation file without its image: error, the file skipped
    split = _split(tmp_path / "orphan", fmt, {**files, "zzz.txt": f"{GOOD[fmt][0]}\n"})
    with pytest.raises(AnnotationError, match=re.escape(f"{split.source}/zzz.txt: no image zzz.*")):
        split.load(strict=True)
    ann = split.load(strict=False)
    assert ann.problems.counts() == {MISSING_IMAGE: 1} and len(ann.images) == 2

    # an image without annotation file: a warning, kept as an image with no object (both modes)
    split = _split(tmp_path / "no_txt", fmt, files)
    _images(Path(split.images_dir), {"c.png": (20, 30)})
    for strict in (True, False):
        ann = split.load(strict=strict)
        assert ann.problems.counts() == {NO_ANNOTATIONS: 1}
        assert [i.image_id for i in ann.images] == [1, 2, 3] and len(ann.images[2].boxes_xyxy) == 0
        assert ann.images[2].height == 20 and ann.summary()["empty_images"] == 1

    # an unreadable image header: error, the image skipped; ids stay positions in the sorted file list
    split = _split(tmp_path / "corrupt", fmt, {**files, "0.txt": f"{GOOD[fmt][0]}\n"})
    (Path(split.images_dir) / "0.png").write_bytes(b"not an image")
    with pytest.raises(AnnotationError, match=re.escape(f"{split.images_dir}/0.png: cannot read the image header")):
        split.load(strict=True)
    ann = split.load(strict=False)
    assert ann.problems.counts() == {CORRUPT_IMAGE: 1}
    assert [(i.image_id, i.file_name) for i in ann.images] == [(2, "a.jpg"), (3, "b.png")]

    # an empty annotations folder: fatal in both modes, naming the folder
    split = _split(tmp_path / "empty", fmt, {})
    for strict in (True, False):
        with pytest.raises(AnnotationError, match=re.escape(f"{split.source}: empty annotations folder")):
            split.load(strict=strict)


# ------------------------------------------------------------------------------------------ evaluation
def test_metric_ignores_a_detection_inside_a_class_agnostic_region():
    """A detection of class 1 inside a label -1 crowd is ignored; without the region it is a false positive."""
    objects_xyxy = [[10, 10, 16, 16], [30, 10, 36, 16], [10, 40, 16, 46]]  # class 0, class 0, class 1
    region_xyxy, inside_xyxy = [40, 40, 70, 70], [50, 50, 56, 56]

    def ap(with_region: bool, with_detection: bool) -> float:
        boxes = objects_xyxy + [region_xyxy] * with_region
        target = {
            "boxes_xyxy": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor([0, 0, 1] + [-1] * with_region),
            "iscrowd": torch.tensor([False] * 3 + [True] * with_region),
            "image_id": 1,
        }
        dets = objects_xyxy + [inside_xyxy] * with_detection
        pred = {
            "boxes_xyxy": torch.tensor(dets, dtype=torch.float32),
            "scores": torch.tensor([0.9, 0.7, 0.6] + [0.95] * with_detection),  # ranked above the true class-1 hit
            "labels": torch.tensor([0, 0, 1] + [1] * with_detection),
        }
        metric = AITODMetric()
        metric.update([pred], [target])
        return float(metric.compute()["AP"])

    assert ap(with_region=True, with_detection=True) == ap(with_region=True, with_detection=False) == 1.0
    # class 1 without the region: the false positive comes first -> precision 1/2 at every recall; mean (1 + 0.5) / 2
    assert ap(with_region=False, with_detection=True) == pytest.approx(0.75, abs=1e-9)


# ------------------------------------------------------------------------------------------ configs and CLI
@pytest.mark.parametrize(("recipe", "split_class"), [("visdrone", "VisDroneSplit"), ("yolo", "YoloSplit")])
def test_data_recipe_parses(recipe, split_class, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["fit", "--config", "configs/quickstart.yaml", "--config", f"configs/data/{recipe}.yaml", "--print_config"]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed.count(f"class_path: tod_lightning.data.{split_class}") == 2 and "synthetic: null" in printed


def test_tiny_fit_on_visdrone_format(tmp_path, monkeypatch):
    """One epoch through the real CLI on the synthetic dataset converted to VisDrone, one ignore region per image."""
    monkeypatch.chdir(tmp_path)
    spec = SyntheticSpec(image_size=96, num_train=6, num_val=3, dense_fraction=0.0)
    splits = {}
    for name, coco_split in ensure_synthetic_dataset(tmp_path / "cache", spec).items():
        ann = read_coco(coco_split.ann_file)
        for image in ann.images:  # a class-agnostic ignore region in the top-left corner of every image
            image.boxes_xyxy = np.concatenate([image.boxes_xyxy, [[0, 0, 12, 12]]]).astype(np.float32)
            image.labels = np.append(image.labels, -1)
            image.areas = np.append(image.areas, 144.0).astype(np.float32)
            image.iscrowd = np.append(image.iscrowd, True)
            image.ann_ids = np.append(image.ann_ids, -1)
        write_visdrone(ann, str(tmp_path / name))
        init_args = {"images_dir": coco_split.images_dir, "annotations_dir": str(tmp_path / name)}
        splits[name] = {"class_path": "tod_lightning.data.VisDroneSplit", "init_args": init_args}
        splits[name]["init_args"]["class_names"] = list(CLASS_NAMES[: spec.num_classes])
    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--data.synthetic=null",
            f"--data.train={json.dumps(splits['train'])}",
            f"--data.val={json.dumps(splits['val'])}",
            "--data.batch_size=3",
            "--data.num_workers=0",
            *quiet_trainer_args(tmp_path),
            "--trainer.max_epochs=1",
            "--trainer.check_val_every_n_epoch=1",
        ]
    )
    datasets = cli.datamodule.datasets
    assert {k: datasets[k].summary()["ignore_regions"] for k in ("train", "val")} == {"train": 6, "val": 3}
    assert cli.model.detector.head.num_classes == 4
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2 and torch.isfinite(metrics["train/loss"])
    assert "val/AP_vt" in metrics and torch.isfinite(metrics["val/AP_vt"])
