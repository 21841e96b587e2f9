"""Data pipeline: COCO loading and validation, box-preserving transforms, collation, the data module."""

from __future__ import annotations

import copy
import json
import pickle

import cv2
import numpy as np
import pytest
import torch

from tod_lightning.data import (
    CocoDetection,
    CocoSplit,
    DetectionDataModule,
    EvalTransform,
    ImageFolderDataset,
    SyntheticSpec,
    TrainAugmentation,
    collate_detection,
)
from tod_lightning.structures import Batch

CATEGORIES = [{"id": 12, "name": "ship"}, {"id": 3, "name": "car"}, {"id": 7, "name": "person"}]


def _coco(images=None, annotations=None, categories=None) -> dict:
    """A small valid COCO dict: image 1 (64x48) with three objects and a crowd, image 2 (40x40) empty."""
    images = images or [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 40, "height": 40},
    ]
    annotations = (
        annotations
        if annotations is not None
        else [
            {"id": 101, "image_id": 1, "category_id": 3, "bbox": [10, 5, 4, 3], "area": 12.0, "iscrowd": 0},
            {"id": 102, "image_id": 1, "category_id": 12, "bbox": [30, 20, 2, 2], "area": 4.0, "iscrowd": 0},
            {"id": 103, "image_id": 1, "category_id": 7, "bbox": [50, 30, 5.5, 6], "iscrowd": 0},  # no "area"
            {"id": 104, "image_id": 1, "category_id": 3, "bbox": [0, 0, 8, 8], "area": 64.0, "iscrowd": 1},
        ]
    )
    return {"images": images, "annotations": annotations, "categories": categories or CATEGORIES}


def _write_split(root, coco: dict, name: str = "ann.json", write_images: bool = True) -> CocoSplit:
    """Write ``coco`` as json and (random) images under ``root``; return the split."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in coco["images"] if write_images else []:
        pixels = rng.integers(1, 256, (image["height"], image["width"], 3), dtype=np.uint8)  # no zeros: padding shows
        cv2.imwrite(str(images_dir / image["file_name"]), pixels)
    ann_file = root / name
    ann_file.write_text(json.dumps(coco))
    return CocoSplit(images_dir=str(images_dir), ann_file=str(ann_file))


def _run(transform, image_hw=(128, 128), boxes_xyxy=(), labels=None, ignore_xyxy=()) -> dict:
    boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    labels = np.arange(len(boxes_xyxy)) if labels is None else np.asarray(labels)
    image = np.full((*image_hw, 3), 128, np.uint8)
    return transform(
        image=image,
        boxes_xyxy=boxes_xyxy,
        labels=labels,
        ignore_xyxy=np.asarray(ignore_xyxy, np.float32).reshape(-1, 4),
    )


# ---------------------------------------------------------------- COCO loading and validation
def test_category_mapping_and_empty_images(tmp_path):
    split = _write_split(tmp_path, _coco())
    dataset = CocoDetection(split.images_dir, split.ann_file)
    assert dataset.category_ids == [3, 7, 12]
    assert dataset.class_names == ["car", "person", "ship"]
    assert len(dataset) == 2  # the image without annotations is kept
    sample = dataset[0]
    assert sample["image"].shape == (48, 64, 3) and sample["image"].dtype == np.uint8
    np.testing.assert_array_equal(sample["labels"], [0, 2, 1])  # ids 3, 12, 7
    np.testing.assert_allclose(sample["boxes_xyxy"], [[10, 5, 14, 8], [30, 20, 32, 22], [50, 30, 55.5, 36]])
    np.testing.assert_allclose(sample["ignore_xyxy"], [[0, 0, 8, 8]])  # the crowd
    np.testing.assert_array_equal(sample["orig_iscrowd"], [False, False, False, True])
    np.testing.assert_allclose(sample["orig_areas"], [12, 4, 33, 64])  # missing "area" -> w * h
    assert sample["orig_size"] == (48, 64) and sample["scale"] == (1.0, 1.0) and sample["num_dropped"] == 0
    empty = dataset[1]
    assert empty["boxes_xyxy"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["image_id"] == 2
    assert dataset.summary() == {
        "images": 2,
        "objects": 3,
        "empty_images": 1,
        "ignore_regions": 1,
        "clipped_boxes": 0,
        "skipped_records": 0,
    }


def test_image_is_rgb(tmp_path):
    coco = _coco(annotations=[])
    split = _write_split(tmp_path, coco)
    bgr = np.zeros((48, 64, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR order
    cv2.imwrite(f"{split.images_dir}/a.png", bgr)
    assert CocoDetection(split.images_dir, split.ann_file)[0]["image"][0, 0].tolist() == [0, 0, 255]


def _with_annotation(**changes):
    def edit(coco):
        coco["annotations"][0].update(changes)

    return edit


def _duplicate_image(coco):
    coco["images"].append(dict(coco["images"][0], file_name="c.png"))


@pytest.mark.parametrize(
    "edit, record",
    [
        (_with_annotation(category_id=99), "annotation id=101"),
        (_with_annotation(bbox=[10, float("nan"), 4, 3]), "annotation id=101"),
        (_with_annotation(bbox=[10, 5, float("inf"), 3]), "annotation id=101"),
        (_with_annotation(bbox=[10, "5", 4, 3]), "annotation id=101"),
        (_with_annotation(bbox=[10, 5, 4]), "annotation id=101"),
        (_with_annotation(bbox=[10, 5, 0, 3]), "annotation id=101"),
        (_with_annotation(bbox=[10, 5, 4, -1]), "annotation id=101"),
        (_with_annotation(image_id=42), "annotation id=101"),
        (_with_annotation(bbox=[70, 5, 4, 3]), "annotation id=101"),  # entirely right of the 64-px-wide image
        (_with_annotation(bbox=[-9, 5, 4, 3]), "annotation id=101"),  # entirely left
        (_duplicate_image, "image id=1"),
    ],
)
def test_bad_record_raises_naming_file_and_record(tmp_path, edit, record):
    coco = _coco()
    edit(coco)
    split = _write_split(tmp_path, coco, write_images=False)
    with pytest.raises(ValueError) as error:
        CocoDetection(split.images_dir, split.ann_file)
    assert split.ann_file in str(error.value) and record in str(error.value)


@pytest.mark.parametrize("text", ["{}", "", '{"images": [', "[1, 2]"])
def test_empty_or_malformed_json_raises_naming_file(tmp_path, text):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(text)
    with pytest.raises(ValueError, match="broken.json"):
        CocoDetection(str(tmp_path), str(ann_file))


def test_partially_outside_box_is_clipped(tmp_path):
    coco = _coco(
        annotations=[
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [-5, 10, 20, 10]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [60, 40, 10, 10]},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},
        ]
    )
    split = _write_split(tmp_path, coco)
    dataset = CocoDetection(split.images_dir, split.ann_file)
    assert dataset.num_clipped == 2
    np.testing.assert_allclose(dataset[0]["boxes_xyxy"], [[0, 10, 15, 20], [60, 40, 64, 48], [1, 1, 3, 3]])


def test_missing_or_corrupt_image_raises_at_getitem_with_path(tmp_path):
    split = _write_split(tmp_path, _coco(), write_images=False)
    dataset = CocoDetection(split.images_dir, split.ann_file)  # loading the json does not open images
    with pytest.raises(OSError, match="a.png"):
        dataset[0]
    (tmp_path / "images" / "b.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="b.png"):
        dataset[1]


def test_image_size_differing_from_json_raises(tmp_path):
    split = _write_split(tmp_path, _coco())
    cv2.imwrite(f"{split.images_dir}/a.png", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="a.png"):
        CocoDetection(split.images_dir, split.ann_file)[0]


def test_image_folder_dataset(tmp_path):
    for name, (h, w) in {"b.tif": (9, 7), "a.JPEG": (5, 6), "c.bmp": (4, 4)}.items():
        cv2.imwrite(str(tmp_path / name), np.full((h, w, 3), 50, np.uint8))
    (tmp_path / "labels.json").write_text("{}")
    dataset = ImageFolderDataset(str(tmp_path), EvalTransform(image_size=18))
    assert dataset.file_names == ["a.JPEG", "b.tif", "c.bmp"]
    sample = dataset[1]
    assert sample["image_id"] == 2 and sample["file_name"] == "b.tif" and sample["orig_size"] == (9, 7)
    assert sample["image"].shape == (18, 14, 3) and sample["scale"] == (2.0, 2.0)
    assert sample["boxes_xyxy"].shape == (0, 4) and sample["orig_boxes_xyxy"].shape == (0, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDataset(str(tmp_path / "empty"))


# ---------------------------------------------------------------- transforms
def test_flips_map_boxes_and_ignore_regions():
    hflip = TrainAugmentation(hflip=1.0, vflip=0.0, scale_range=(1.0, 1.0), photometric=0.0)
    out = _run(hflip, (60, 100), [[10, 20, 30, 40]], ignore_xyxy=[[0, 0, 5, 5]])
    np.testing.assert_allclose(out["boxes_xyxy"], [[70, 20, 90, 40]], atol=1e-3)
    np.testing.assert_allclose(out["ignore_xyxy"], [[95, 0, 100, 5]], atol=1e-3)
    vflip = TrainAugmentation(hflip=0.0, vflip=1.0, scale_range=(1.0, 1.0), photometric=0.0)
    out = _run(vflip, (60, 100), [[10, 5, 30, 15]])
    np.testing.assert_allclose(out["boxes_xyxy"], [[10, 45, 30, 55]], atol=1e-3)


def test_crowd_ignore_region_follows_the_image_through_the_dataset(tmp_path):
    split = _write_split(tmp_path, _coco())
    transform = TrainAugmentation(hflip=1.0, vflip=0.0, scale_range=(1.0, 1.0), photometric=0.0)
    plain = CocoDetection(split.images_dir, split.ann_file)[0]
    flipped = CocoDetection(split.images_dir, split.ann_file, transform)[0]
    np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
    np.testing.assert_allclose(flipped["ignore_xyxy"], [[56, 0, 64, 8]], atol=1e-3)
    np.testing.assert_allclose(flipped["boxes_xyxy"][0], [50, 5, 54, 8], atol=1e-3)


def test_two_pixel_box_survives_upscaling_augmentation():
    transform = TrainAugmentation(scale_range=(1.0, 1.25))  # other settings at their defaults
    for seed in range(30):
        transform.set_seed(seed)
        out = _run(transform, (128, 128), [[63, 63, 65, 65]], labels=[2])
        assert out["num_dropped"] == 0 and out["labels"].tolist() == [2]
        wh = out["boxes_xyxy"][0, 2:] - out["boxes_xyxy"][0, :2]
        assert (wh >= transform.min_box_size - 1e-3).all(), wh


def test_box_shrunk_below_min_size_becomes_ignore_and_is_counted():
    transform = TrainAugmentation(hflip=0.0, vflip=0.0, scale_range=(0.5, 0.6), photometric=0.0)
    out = _run(transform, (128, 128), [[60, 60, 63, 63], [40, 40, 60, 60]], labels=[0, 1])
    assert out["num_dropped"] == 1 and out["labels"].tolist() == [1]
    assert out["ignore_xyxy"].shape == (1, 4)
    wh = out["ignore_xyxy"][0, 2:] - out["ignore_xyxy"][0, :2]
    assert ((wh >= 1.5 - 1e-3) & (wh <= 1.8 + 1e-3)).all(), wh


def test_box_moved_out_of_frame_is_counted_not_ignored():
    transform = TrainAugmentation(hflip=0.0, vflip=0.0, scale_range=(2.0, 2.0), photometric=0.0)
    out = _run(transform, (100, 100), [[1, 1, 5, 5], [45, 45, 55, 55]], labels=[0, 1])
    assert out["num_dropped"] == 1 and out["labels"].tolist() == [1] and out["ignore_xyxy"].shape == (0, 4)
    np.testing.assert_allclose(out["boxes_xyxy"], [[40, 40, 60, 60]], atol=1e-2)


def test_no_box_is_silently_lost():
    rng = np.random.default_rng(0)
    transform = TrainAugmentation(scale_range=(0.5, 1.5))
    for seed in range(100):
        transform.set_seed(seed)
        # central boxes cannot leave a 128-px frame at zoom <= 1.5, so each one is kept or becomes ignore
        xy = rng.uniform(40, 80, (20, 2))
        wh = rng.uniform(1.0, 6.0, (20, 2))
        central_xyxy = np.concatenate([xy, xy + wh], 1)
        out = _run(transform, (128, 128), central_xyxy)
        assert len(out["boxes_xyxy"]) + out["num_dropped"] == 20
        assert len(out["ignore_xyxy"]) == out["num_dropped"]
        # anywhere, with ignore regions too: kept + dropped == input, and kept boxes are big enough
        xy = rng.uniform(0, 120, (20, 2))
        any_xyxy = np.concatenate([xy, np.minimum(xy + rng.uniform(1.0, 8.0, (20, 2)), 128)], 1)
        out = _run(transform, (128, 128), any_xyxy, ignore_xyxy=[[0, 0, 10, 10]])
        assert len(out["boxes_xyxy"]) + out["num_dropped"] == 20
        assert len(set(out["labels"].tolist())) == len(out["labels"])  # each input box at most once
        if len(out["boxes_xyxy"]):
            assert (out["boxes_xyxy"][:, 2:] - out["boxes_xyxy"][:, :2] >= 2.0 - 1e-3).all()
            assert (out["boxes_xyxy"] >= 0).all() and (out["boxes_xyxy"] <= 128).all()


def test_eval_transform_resizes_keeping_ratio_and_scale_maps_back(tmp_path):
    coco = _coco(
        images=[{"id": 1, "file_name": "a.png", "width": 101, "height": 67}],
        annotations=[
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10.5, 5.25, 3, 2]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [90, 60, 11, 7]},
        ],
    )
    split = _write_split(tmp_path, coco)
    for image_size in (50, 160):  # down and up
        sample = CocoDetection(split.images_dir, split.ann_file, EvalTransform(image_size))[0]
        h, w = sample["image"].shape[:2]
        assert w == image_size and h == round(67 * image_size / 101)
        sy, sx = sample["scale"]
        assert (sy, sx) == (h / 67, w / 101) and sample["num_dropped"] == 0
        np.testing.assert_allclose(
            sample["boxes_xyxy"] / np.array([sx, sy, sx, sy]), sample["orig_boxes_xyxy"], atol=1e-3
        )
    identity = CocoDetection(split.images_dir, split.ann_file, EvalTransform())[0]
    assert identity["image"].shape == (67, 101, 3) and identity["scale"] == (1.0, 1.0)
    np.testing.assert_array_equal(identity["boxes_xyxy"], identity["orig_boxes_xyxy"])


def test_train_augmentation_resizes_first():
    out = _run(TrainAugmentation(image_size=64), (100, 200), [[100, 50, 110, 60]])
    assert out["image"].shape == (32, 64, 3)
    assert len(out["boxes_xyxy"]) + out["num_dropped"] == 1


def test_train_augmentation_rejects_bad_settings():
    with pytest.raises(ValueError, match="hflip"):
        TrainAugmentation(hflip=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        TrainAugmentation(scale_range=(1.2, 0.8))


# ---------------------------------------------------------------- collate
def _sample(h, w, num_boxes, image_id):
    return {
        "image": np.full((h, w, 3), 200, np.uint8),
        "boxes_xyxy": np.tile([[1, 2, 5, 6]], (num_boxes, 1)).astype(np.float32),
        "labels": np.zeros(num_boxes, np.int64),
        "ignore_xyxy": np.zeros((0, 4), np.float32),
        "image_id": image_id,
        "file_name": f"{image_id}.png",
        "orig_size": (h, w),
        "scale": (1.0, 1.0),
        "orig_boxes_xyxy": np.zeros((num_boxes, 4), np.float32),
        "orig_labels": np.zeros(num_boxes, np.int64),
        "orig_areas": np.zeros(num_boxes, np.float32),
        "orig_iscrowd": np.zeros(num_boxes, bool),
        "num_dropped": image_id,
    }


def test_collate_pads_with_zeros_to_a_multiple_of_size_divisor():
    batch = collate_detection([_sample(30, 50, 2, 1), _sample(45, 20, 0, 2)], size_divisor=32)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (2, 3, 64, 64)
    assert batch.image_sizes.tolist() == [[30, 50], [45, 20]] and batch.image_sizes.dtype == torch.int64
    assert (batch.images[0, :, :30, :50] == 200).all() and (batch.images[1, :, :45, :20] == 200).all()
    assert batch.images[0].sum() == 200 * 3 * 30 * 50 and batch.images[1].sum() == 200 * 3 * 45 * 20  # rest is 0
    first, second = batch.targets
    assert first.boxes_xyxy.shape == (2, 4) and first.boxes_xyxy.dtype == torch.float32
    assert first.labels.dtype == torch.int64 and second.boxes_xyxy.shape == (0, 4)
    assert second.orig_iscrowd.dtype == torch.bool and (first.num_dropped, second.num_dropped) == (1, 2)
    assert batch.file_names == ["1.png", "2.png"]
    assert collate_detection([_sample(64, 32, 1, 1)], size_divisor=32).images.shape == (1, 3, 64, 32)  # exact: no pad


# ---------------------------------------------------------------- data module
@pytest.fixture
def tiny_splits(tmp_path):
    train = _write_split(tmp_path / "train", _coco())
    images = [{"id": 5, "file_name": "v.png", "width": 50, "height": 70}]
    val = _write_split(
        tmp_path / "val",
        _coco(images=images, annotations=[{"id": 1, "image_id": 5, "category_id": 7, "bbox": [3, 3, 2, 2]}]),
    )
    folder = tmp_path / "bare"
    folder.mkdir()
    for name, (h, w) in {"x.jpg": (33, 40), "y.PNG": (20, 64)}.items():
        cv2.imwrite(str(folder / name), np.full((h, w, 3), 90, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return train, val, str(folder)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_datamodule_batches_from_every_loader(tiny_splits, num_workers):
    train, val, folder = tiny_splits
    dm = DetectionDataModule(
        train=train, val=val, test=val, predict=folder, batch_size=2, num_workers=num_workers, size_divisor=16
    )
    assert dm.num_classes == 3 and dm.class_names == ["car", "person", "ship"] and dm.category_ids == [3, 7, 12]
    for stage in ("fit", "test", "predict"):
        dm.setup(stage)
    train_batch = next(iter(dm.train_dataloader()))
    assert isinstance(train_batch, Batch) and len(train_batch) == 2
    assert train_batch.images.shape[-1] % 16 == 0 and train_batch.images.shape[-2] % 16 == 0
    assert sum(len(t.boxes_xyxy) + t.num_dropped for t in train_batch.targets) == 3
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch.targets[0].image_id == 5 and batch.targets[0].labels.tolist() == [1]
    predict = next(iter(dm.predict_dataloader()))
    assert predict.file_names == ["x.jpg", "y.PNG"] and [t.image_id for t in predict.targets] == [1, 2]
    assert predict.image_sizes.tolist() == [[33, 40], [20, 64]] and predict.images.shape == (2, 3, 48, 64)
    assert all(len(t.boxes_xyxy) == 0 for t in predict.targets)
    loader = dm.train_dataloader()
    assert loader.persistent_workers == (num_workers > 0)
    pickle.loads(pickle.dumps(loader.collate_fn))
    sample = pickle.loads(pickle.dumps(loader.dataset))[0]
    assert len(sample["boxes_xyxy"]) + sample["num_dropped"] == 3


def test_datamodule_rejects_splits_with_different_categories(tmp_path):
    train = _write_split(tmp_path / "train", _coco())
    other = copy.deepcopy(CATEGORIES)
    other[0]["name"] = "boat"
    val = _write_split(tmp_path / "val", _coco(annotations=[], categories=other))
    with pytest.raises(ValueError, match="categories"):
        DetectionDataModule(train=train, val=val)


def test_datamodule_without_annotated_split_names_the_problem(tiny_splits):
    dm = DetectionDataModule(predict=tiny_splits[2], num_workers=0)
    with pytest.raises(ValueError, match="categories"):
        dm.num_classes
    dm.setup("predict")
    assert len(next(iter(dm.predict_dataloader()))) == 2


def test_datamodule_generates_the_synthetic_dataset(tmp_path):
    spec = SyntheticSpec(image_size=64, num_train=3, num_val=2, num_classes=2, dense_fraction=0.0, max_objects=5)
    dm = DetectionDataModule(synthetic=spec, cache_dir=str(tmp_path), batch_size=3, num_workers=0)
    assert dm.num_classes == 2 and len(dm.class_names) == 2
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (3, 3, 64, 64)
    assert len(next(iter(dm.val_dataloader()))) == 2


def test_worker_augmentation_streams_differ(tmp_path):
    """Forked workers inherit one albumentations generator state; the datamodule must reseed each worker."""
    coco = _coco(
        images=[{"id": i, "file_name": "a.png", "width": 64, "height": 48} for i in range(1, 17)], annotations=[]
    )  # 16 records of one image: a sample differs only by its flips
    split = _write_split(tmp_path, coco)
    augmentation = TrainAugmentation(hflip=0.5, vflip=0.5, scale_range=(1.0, 1.0), photometric=0.0)
    dm = DetectionDataModule(
        train=split, batch_size=1, num_workers=2, persistent_workers=False, train_augmentation=augmentation
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    torch.manual_seed(0)  # the workers' seeds derive from it
    unshuffled = torch.utils.data.DataLoader(
        loader.dataset, batch_size=1, num_workers=2, collate_fn=loader.collate_fn, worker_init_fn=loader.worker_init_fn
    )  # worker 0 even, worker 1 odd
    images = [batch.images[0] for batch in unshuffled]
    # with the same stream, every pair (2k, 2k+1) would be flipped alike
    assert not all(torch.equal(images[i], images[i + 1]) for i in range(0, 16, 2))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ddp_ranks_draw_different_augmentations(tmp_path, num_workers):
    """DDP ranks share one global seed; each rank's stream must still differ (and repeat for the same rank)."""
    coco = _coco(
        images=[{"id": i, "file_name": "a.png", "width": 64, "height": 48} for i in range(1, 17)], annotations=[]
    )  # 16 records of one image: a sample differs only by its flips
    split = _write_split(tmp_path, coco)

    def flips(rank: int) -> list[torch.Tensor]:
        augmentation = TrainAugmentation(hflip=0.5, vflip=0.5, scale_range=(1.0, 1.0), photometric=0.0)
        dm = DetectionDataModule(
            train=split,
            batch_size=1,
            num_workers=num_workers,
            persistent_workers=False,
            train_augmentation=augmentation,
        )
        dm.trainer = type("FakeTrainer", (), {"global_rank": rank})()
        dm.setup("fit")
        torch.manual_seed(0)  # seed_everything gives every rank the same global seed
        loader = dm.train_dataloader()
        unshuffled = torch.utils.data.DataLoader(
            loader.dataset,
            batch_size=1,
            num_workers=num_workers,
            collate_fn=loader.collate_fn,
            worker_init_fn=loader.worker_init_fn,
        )
        return [batch.images[0] for batch in unshuffled]

    rank0, rank0_again, rank1 = flips(0), flips(0), flips(1)
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank0_again))
    assert not all(torch.equal(a, b) for a, b in zip(rank0, rank1))


def test_datamodule_categories_travel_with_checkpoints(tiny_splits):
    train, val, folder = tiny_splits
    state = DetectionDataModule(train=train, num_workers=0, size_divisor=64).state_dict()
    assert state == {"category_ids": [3, 7, 12], "class_names": ["car", "person", "ship"], "size_divisor": 64}
    assert DetectionDataModule(predict=folder, num_workers=0).state_dict() == {"size_divisor": 32}
    bare = DetectionDataModule(predict=folder, num_workers=0)  # no annotated split: categories unknown
    bare.load_state_dict(state)
    assert bare.category_ids == [3, 7, 12] and bare.class_names == ["car", "person", "ship"]
    with pytest.raises(ValueError, match="checkpoint was trained on categories"):
        DetectionDataModule(train=train, num_workers=0).load_state_dict({"category_ids": [1], "class_names": ["x"]})
