"""The dataset report (python -m tod_lightning.report): exact numbers on a hand-built dataset, the config path
on a tiny synthetic dataset, the JSON output, and one split of each other format."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tod_lightning.data.dataset import read_image_rgb
from tod_lightning.data.synthetic import size_histogram
from tod_lightning.metrics import DEFAULT_AREA_RANGES
from tod_lightning.report import main, size_bin_counts

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]


def _ann(ann_id, image_id, bbox, area=None, category_id=1, iscrowd=0):
    record = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": iscrowd}
    return record if area is None else {**record, "area": area}


def _hand_built(root: Path) -> tuple[str, str]:
    """A COCO split with one of everything; the expected numbers are worked out in the test.

    Images (w x h): 1 a.png 100x80 (7 objects + 1 crowd), 2 b.png 50x50 (2 objects), 3 c.png empty, 4 d.png
    (1 object, file missing), 5 e.png (corrupt file), 6 f.png (file 30x20, annotated 30x30), and a second
    record of id 2. Annotations 11..16 are bad records; 14 crosses the border and is clipped.
    """
    images = [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 50, "height": 50},
        {"id": 3, "file_name": "c.png", "width": 40, "height": 40},
        {"id": 4, "file_name": "d.png", "width": 60, "height": 60},
        {"id": 5, "file_name": "e.png", "width": 30, "height": 30},
        {"id": 6, "file_name": "f.png", "width": 30, "height": 30},
        {"id": 2, "file_name": "b2.png", "width": 50, "height": 50},  # duplicate id
    ]
    annotations = [
        _ann(1, 1, [0, 0, 8, 8], 64.0),  # vt, on the 64 bound
        _ann(2, 1, [10, 10, 2, 3]),  # vt, area 6 from w * h
        _ann(3, 1, [20, 20, 16, 16], 256.0),  # t, on the 256 bound
        _ann(4, 1, [40, 40, 10, 10], 100.0, category_id=2),  # t
        _ann(5, 1, [50, 10, 20, 20], 400.0),  # s
        _ann(6, 1, [0, 40, 40, 30], 1200.0),  # m
        _ann(7, 1, [60, 60, 20, 10], 200.0, iscrowd=1),  # an ignore region, not an object
        _ann(8, 2, [5, 5, 4, 16], 64.0),  # vt, on the 64 bound
        _ann(9, 2, [30, 30, 3, 3], 9.0),  # vt
        _ann(10, 4, [1, 1, 5, 5], 25.0),  # vt
        _ann(11, 1, [1, 1, 4, 4], 16.0, category_id=99),  # unknown category
        _ann(12, 1, [1, float("nan"), 4, 4]),  # NaN coordinate
        _ann(13, 1, [200, 5, 4, 4], 16.0),  # entirely outside the 100-px-wide image
        _ann(14, 1, [90, 70, 20, 20], 100.0),  # clipped to [90, 70, 100, 80]: t
        _ann(15, 1, [3, 3, 0, 4]),  # zero width
        _ann(16, 77, [3, 3, 4, 4]),  # no image 77
    ]
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    for name, (h, w) in {"a.png": (80, 100), "b.png": (50, 50), "c.png": (40, 40), "f.png": (20, 30)}.items():
        cv2.imwrite(str(images_dir / name), np.full((h, w, 3), 100, np.uint8))
    (images_dir / "e.png").write_bytes(b"\x89PNG but not really")
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return str(images_dir), str(ann_file)


def _split_args(images_dir: str, ann_file: str) -> list[str]:
    return [
        "--split.class_path=tod_lightning.data.CocoSplit",
        f"--split.init_args.images_dir={images_dir}",
        f"--split.init_args.ann_file={ann_file}",
    ]


def test_hand_built_dataset_numbers_exactly(tmp_path, capsys):
    images_dir, ann_file = _hand_built(tmp_path)
    out = tmp_path / "out" / "report.json"
    args = [*_split_args(images_dir, ann_file), "--strides=[4, 8, 16]", "--max_per_image=2", f"--json={out}"]
    result = main(args)
    r = result["splits"]["split"]
    assert r["error"] is None and r["source"] == ann_file and r["images_dir"] == images_dir
    # 6 image records kept (the duplicate id is skipped); 10 objects: 7 of image 1 (14 clipped, kept), 2, 0, 1.
    # 11 (unknown category, usable box) became a second ignore region
    assert (r["images"], r["objects"], r["ignore_regions"], r["empty_images"]) == (6, 10, 2, 3)
    # areas: 64 6 256 100 400 1200 100 | 64 9 | 25 -> vt 5 (64 twice: the shared bound goes to the lower bin),
    # t 3 (256: lower bin again), s 1, m 1
    assert [(b["name"], b["low"], b["high"], b["count"]) for b in r["size_bins"]] == [
        ("vt", 0.0, 64.0, 5),
        ("t", 64.0, 256.0, 3),
        ("s", 256.0, 1024.0, 1),
        ("m", 1024.0, 1e10, 1),
    ]
    assert [b["share"] for b in r["size_bins"]] == [0.5, 0.3, 0.1, 0.1]
    assert (r["on_shared_bound"], r["outside_bins"]) == (3, 0)
    # objects per image [7, 2, 0, 1, 0, 0]
    assert r["objects_per_image_mean"] == pytest.approx(10 / 6)
    assert (r["objects_per_image_median"], r["objects_per_image_max"]) == (0.5, 7)
    # cap 2: only image 1 has MORE than 2 (image 2 has exactly 2)
    assert (r["max_per_image"], r["images_above_cap"], r["share_above_cap"]) == (2, 1, pytest.approx(1 / 6))
    # sqrt(area): 8 2.45 16 10 20 34.6 10 8 3 5; short sides: 8 2 16 10 20 30 10 4 3 5 (strict "<": 8 is not < 8)
    assert [
        (s["stride"], s["below"], s["share_below"], s["short_side_below"], s["share_short_side_below"])
        for s in r["strides"]
    ] == [(4, 2, 0.2, 2, 0.2), (8, 3, 0.3, 4, 0.4), (16, 7, 0.7, 7, 0.7)]
    assert r["side_edges"] == [0, 2, 4, 8, 16, 32, 64, 128, 256]
    assert r["side_counts"] == {
        "sqrt_area": [0, 2, 1, 4, 2, 1, 0, 0, 0],
        "short_side": [0, 2, 2, 3, 3, 0, 0, 0, 0],
        "long_side": [0, 2, 1, 3, 3, 1, 0, 0, 0],
    }
    # every problem, reader's first (file order), then the image files'
    assert [(p["kind"], p["where"], p["action"]) for p in r["problems"]] == [
        ("duplicate_image_id", f"{ann_file}: image id=2", "skipped image"),
        ("unknown_category", f"{ann_file}: annotation id=11", "made an ignore region"),
        ("non_finite_box", f"{ann_file}: annotation id=12", "skipped annotation"),
        ("box_outside_image", f"{ann_file}: annotation id=13", "skipped annotation"),
        ("box_clipped", f"{ann_file}: annotation id=14", "clipped"),
        ("non_positive_box", f"{ann_file}: annotation id=15", "skipped annotation"),
        ("unknown_image_id", f"{ann_file}: annotation id=16", "skipped annotation"),
        ("missing_image", f"{images_dir}/d.png: image id=4", "skipped image"),
        ("corrupt_image", f"{images_dir}/e.png: image id=5", "skipped image"),
        ("image_size_mismatch", f"{images_dir}/f.png: image id=6", "skipped image"),
    ]
    assert r["problems"][-1]["message"] == "header size 30x20 (w x h) differs from the annotation's 30x30"
    assert r["problem_counts"]["box_clipped"] == 1 and sum(r["problem_counts"].values()) == 10
    # the JSON file holds the same data (strict JSON: no NaN or Infinity)
    written = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert written == json.loads(json.dumps(result))
    assert written["strides"] == [4, 8, 16] and written["strides_from"] == "--strides"
    assert written["area_ranges"] == {k: list(v) for k, v in DEFAULT_AREA_RANGES.items()}
    # ... and the printed tables
    text = capsys.readouterr().out
    assert "images 6, objects 10, ignore regions 2, empty images 3" in text
    assert re.search(r"\n  vt +\[0, 64\] +5 +50\.0%\n", text)
    assert re.search(r"\n  16 +7 +70\.0% +7 +70\.0%\n", text)  # the stride table's last row
    assert "images with more objects than the detection cap (max_per_image=2): 1 of 6 (16.7%)" in text
    assert "WARNING: the detector keeps at most max_per_image" in text
    assert f"{images_dir}/e.png: image id=5: cannot read the image header" in text
    assert "problems: 10" in text


def test_problem_list_is_limited_in_print_but_complete_in_json(tmp_path, capsys):
    images_dir, ann_file = _hand_built(tmp_path)
    result = main([*_split_args(images_dir, ann_file), "--max_problems=3", "--check_images=false"])
    assert len(result["splits"]["split"]["problems"]) == 7  # the reader's only: image files not checked
    text = capsys.readouterr().out
    assert "annotation id=12" in text and "annotation id=13" not in text and "... and 4 more" in text


def test_size_bins_shared_bounds_and_outside():
    areas = np.array([0, 64, 64.0001, 256, 1024, 1e10, 2e10, -1])
    bins, on_bound, outside = size_bin_counts(areas)
    assert [b.count for b in bins] == [2, 2, 1, 1]  # [0, 64], (64, 256], (256, 1024], (1024, 1e10]
    assert (on_bound, outside) == (3, 2)  # 64, 256, 1024; 2e10 and -1 lie in no bin
    with pytest.raises(ValueError, match="contiguous"):
        size_bin_counts(areas, {"a": (0, 10), "b": (20, 30)})


def test_image_size_is_checked_in_the_stored_pixel_grid_as_the_dataset_decodes(tmp_path):
    # A 20x10 (w x h) JPEG whose EXIF orientation 6 says "rotate 90 degrees": the dataset decodes the stored
    # grid (no rotation), so an annotation of width 20, height 10 is right and one of width 10, height 20 is not.
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (20, 10)).save(images_dir / "r.jpg", exif=exif)
    assert read_image_rgb(str(images_dir / "r.jpg")).shape[:2] == (10, 20)  # (h, w) as the dataset sees it
    records = [{"id": 1, "file_name": "r.jpg", "width": 20, "height": 10}]
    records.append({"id": 2, "file_name": "r.jpg", "width": 10, "height": 20})
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": records, "annotations": [], "categories": CATEGORIES}))
    r = main(_split_args(str(images_dir), str(ann_file)))["splits"]["split"]
    assert [(p["kind"], p["where"]) for p in r["problems"]] == [
        ("no_annotations", str(ann_file)),
        ("image_size_mismatch", f"{images_dir}/r.jpg: image id=2"),
    ]


def test_quickstart_config_on_a_tiny_synthetic_dataset(tmp_path):
    cache = tmp_path / "cache"
    result = main(
        [
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            f"--data.cache_dir={cache}",
            "--data.synthetic.image_size=64",
            "--data.synthetic.num_train=4",
            "--data.synthetic.num_val=2",
            "--data.synthetic.dense_fraction=0.0",
        ]
    )
    # quickstart: resnet18 out_strides [4, 8, 16] into an FPN P2-P4; PostProcessor's default cap
    assert result["strides"] == [4, 8, 16]
    assert result["strides_from"] == "model.backbone out_strides [4, 8, 16], FPN levels P2-P4"
    assert (result["max_per_image"], result["max_per_image_from"]) == (1500, "PostProcessor default")
    assert list(result["splits"]) == ["train", "val"]  # num_test=0: no test split
    for name, n_images in (("train", 4), ("val", 2)):
        r = result["splits"][name]
        assert Path(r["source"]).parent.parent.parent == cache and r["images"] == n_images
        assert r["problems"] == [] and r["error"] is None
        # the synthetic generator's own histogram, computed independently from the json
        expected = size_histogram(r["source"])
        assert r["objects"] == expected["num_objects"] > 0
        shares = [b["share"] for b in r["size_bins"]]
        expected_shares = [expected[k] for k in ("area_0_64", "area_64_256", "area_256_1024", "area_gt_1024")]
        assert shares == pytest.approx(expected_shares)
        assert r["objects_per_image_max"] == expected["objects_per_image_max"]
        assert r["objects_per_image_mean"] == pytest.approx(expected["objects_per_image_mean"])
        assert sum(r["side_counts"]["sqrt_area"]) == r["objects"]


def test_aitod_recipe_strides_cap_and_a_missing_annotation_file(tmp_path):
    result = main(["--config", str(ROOT / "configs/aitod_r50.yaml"), "--check_images=false"])
    assert result["strides"] == [4, 8, 16, 32, 64]  # FPN P2-P6: one level beyond the backbone's deepest
    assert (result["max_per_image"], result["max_per_image_from"]) == (1500, "model.postprocess")
    for name in ("train", "val"):  # data/AI-TOD is not there: a fatal error per split, named
        error = result["splits"][name]["error"]
        assert "data/AI-TOD/annotations/aitod_" in error


@pytest.mark.parametrize("text", ["", "{not json", '{"images": [], "categories": []}'])
def test_unreadable_annotation_file_is_a_fatal_error_of_its_split(tmp_path, text, capsys):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(text)
    split = {
        "class_path": "tod_lightning.data.CocoSplit",
        "init_args": {"images_dir": str(tmp_path), "ann_file": str(ann_file)},
    }
    r = main([f"--split={json.dumps(split)}"])["splits"]["split"]  # the JSON form of --split
    assert r["error"].startswith(f"{ann_file}: ") and r["images"] == 0
    assert f"FATAL: {ann_file}: " in capsys.readouterr().out


def test_no_split_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code != 0 and "nothing to report" in capsys.readouterr().err


def _write_images(images_dir: Path, sizes: dict[str, tuple[int, int]]) -> None:
    images_dir.mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images_dir / name), np.full((h, w, 3), 90, np.uint8))


def test_visdrone_split(tmp_path):
    # VisDrone txt: x, y, w, h, score, category, truncation, occlusion; category 0 = ignored region.
    images_dir, labels_dir = tmp_path / "images", tmp_path / "annotations"
    _write_images(images_dir, {"0001.jpg": (40, 60), "0002.jpg": (40, 60)})
    labels_dir.mkdir()
    (labels_dir / "0001.txt").write_text("1,1,8,8,1,4,0,0\n10,10,20,20,1,1,0,0\n0,30,10,10,0,0,0,0\n")
    (labels_dir / "0002.txt").write_text("5,5,3,3,1,1,0,0\n5,5,0,3,1,1,0,0\n")  # line 2: zero width
    split_args = [
        "--split.class_path=tod_lightning.data.VisDroneSplit",
        f"--split.init_args.images_dir={images_dir}",
        f"--split.init_args.annotations_dir={labels_dir}",
    ]
    r = main([*split_args, "--strides=[4, 8]"])["splits"]["split"]
    assert (r["images"], r["objects"], r["ignore_regions"], r["empty_images"]) == (2, 3, 1, 0)
    assert [b["count"] for b in r["size_bins"]] == [2, 0, 1, 0]  # areas 64, 400, 9
    assert [s["below"] for s in r["strides"]] == [1, 1]  # sqrt(area) 8, 20, 3
    assert r["objects_per_image_max"] == 2
    assert [(p["kind"], p["where"]) for p in r["problems"]] == [("non_positive_box", f"{labels_dir}/0002.txt:2")]


def test_yolo_split(tmp_path):
    # YOLO txt: class cx cy w h, normalised to the image size (here 100 x 50).
    root = tmp_path / "yolo"
    _write_images(root / "images", {"a.png": (50, 100), "b.png": (50, 100)})
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.1 0.1 0.04 0.08\n1 0.5 0.5 0.2 0.4\n")  # 4x4 px, 20x20 px
    (root / "labels" / "b.txt").write_text("7 0.5 0.5 0.1 0.1\n")  # class 7 of 2: an ignore region (lenient)
    split_args = [
        "--split.class_path=tod_lightning.data.YoloSplit",
        f"--split.init_args.images_dir={root / 'images'}",
        f"--split.init_args.labels_dir={root / 'labels'}",
        f"--split.init_args.class_names={['car', 'person']}",
    ]
    r = main([*split_args, "--strides=[4, 8]"])["splits"]["split"]
    assert (r["images"], r["objects"], r["ignore_regions"], r["empty_images"]) == (2, 2, 1, 1)  # b: no object
    assert [b["count"] for b in r["size_bins"]] == [1, 0, 1, 0]  # areas 16, 400
    assert [s["below"] for s in r["strides"]] == [0, 1]  # sqrt(area) 4 (not < 4), 20
    assert math.isclose(r["objects_per_image_mean"], 1.0)
    assert [(p["kind"], p["where"]) for p in r["problems"]] == [("unknown_category", f"{root / 'labels'}/b.txt:1")]
