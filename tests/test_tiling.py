"""Tiled training: the tile plan, the border rule of a crop, tiles through the dataset and the data module."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tod_lightning.data import (
    DetectionDataModule,
    DetectionDataset,
    EvalTransform,
    ImageRecord,
    SyntheticSpec,
    TileSpec,
    TrainAugmentation,
    ensure_synthetic_dataset,
)
from tod_lightning.data.coco import read_coco
from tod_lightning.data.tiling import tile_box_fate
from tod_lightning.ops.tiles import tile_windows

# A 300 x 400 px scene cut into 128 px tiles: x starts 0, 96, 192, 272; y starts 0, 96, 172 -> 12 tiles.
SCENE = SyntheticSpec(
    image_size=(300, 400),
    density_side=100,  # 300 x 400 px = 12 squares of 100 px
    num_train=3,
    num_val=2,
    seed=5,
    size_mix=(0.5, 0.5, 0.0, 0.0),  # sides <= 31 px (a 256 px² ship), so an overlap of 32 px holds any object
    empty_fraction=0.0,
    dense_fraction=1.0,
    dense_min=5,  # 5..8 per 100 px square: 60..96 objects per scene
    dense_max=8,
)


def _record(image_id: int, height: int, width: int, boxes_xyxy=(), iscrowd=None) -> ImageRecord:
    boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    iscrowd = np.zeros(len(boxes_xyxy), bool) if iscrowd is None else np.asarray(iscrowd, bool)
    return ImageRecord(
        image_id, f"{image_id}.png", height, width, boxes_xyxy, np.zeros(len(boxes_xyxy), np.int64), iscrowd=iscrowd
    )


def _raw(image_hw, boxes_xyxy=(), ignore_xyxy=(), num_dropped=0) -> dict:
    boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    image = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    return {
        "image": image,
        "boxes_xyxy": boxes_xyxy,
        "labels": np.arange(10, 10 + len(boxes_xyxy), dtype=np.int64),
        "ignore_xyxy": np.asarray(ignore_xyxy, np.float32).reshape(-1, 4),
        "num_dropped": num_dropped,
    }


# ---------------------------------------------------------------- plan
def _plan_records() -> list[ImageRecord]:
    """Three 300 x 400 images (12 tiles of 128 px each: x1 in 0, 96, 192, 272; y1 in 0, 96, 172)."""
    return [
        # In tile (0, 0); in the 4 tiles overlapping at 96..128 x 96..128; in the bottom-right tile: 5 tiles.
        _record(1, 300, 400, [[10, 10, 16, 14], [100, 100, 110, 110], [380, 280, 390, 290]]),
        # Inside tile column 96..224; cut by column 192..320 with 1 of its 8 px inside (visibility 0.125): there it
        # is only an ignore region, so that tile counts as empty. 1 tile.
        _record(2, 300, 400, [[185, 40, 193, 44]]),
        _record(3, 300, 400, [[100, 100, 140, 140]], iscrowd=[True]),  # only an ignore region: all tiles empty
    ]


def _tiles_with_objects(records, spec: TileSpec) -> set[tuple[int, tuple[int, ...]]]:
    """Reference, one box and one tile at a time: tiles where some object is kept under the border rule."""
    out = set()
    for index, record in enumerate(records):
        for window in tile_windows(record.height, record.width, spec.tile_size, spec.overlap).tolist():
            for box, crowd in zip(record.boxes_xyxy.tolist(), record.iscrowd.tolist()):
                inter_w = min(box[2], window[2]) - max(box[0], window[0])
                inter_h = min(box[3], window[3]) - max(box[1], window[1])
                inside = box[0] >= window[0] and box[1] >= window[1] and box[2] <= window[2] and box[3] <= window[3]
                visible = max(inter_w, 0) * max(inter_h, 0) / ((box[2] - box[0]) * (box[3] - box[1]))
                cut_kept = min(inter_w, inter_h) >= spec.min_box_size and visible >= spec.min_visibility
                if not crowd and (inside or cut_kept):
                    out.add((index, tuple(window)))
    return out


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_plan_keeps_every_object_tile_and_an_exact_share_of_empty_tiles(ratio):
    records = _plan_records()
    spec = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=ratio, seed=1)
    plan = spec.plan(records)
    with_objects = _tiles_with_objects(records, spec)
    assert len(with_objects) == 5 + 1 and (1, (96, 0, 224, 128)) in with_objects
    assert (1, (192, 0, 320, 128)) not in with_objects  # the sliver's tile counts as empty
    assert all(index != 2 for index, _ in with_objects)  # ignore regions are not objects
    planned = set(plan)
    assert len(planned) == len(plan)  # no tile twice
    assert with_objects <= planned
    assert len(plan) - len(with_objects) == round(ratio * 30)  # 36 tiles, 30 of them empty
    assert plan == sorted(plan, key=lambda t: (t[0], t[1][1], t[1][0]))  # image by image, row-major
    assert spec.plan(records) == plan  # deterministic


def test_plan_draws_empty_tiles_by_seed():
    records = _plan_records()
    a = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=0.3, seed=0).plan(records)
    b = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=0.3, seed=0).plan(records)
    c = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=0.3, seed=1).plan(records)
    assert a == b and len(a) == len(c) == 6 + round(0.3 * 30)
    assert set(a) != set(c)


def test_image_smaller_than_a_tile_is_one_tile_and_unknown_sizes_are_refused():
    spec = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=1.0)
    assert spec.plan([_record(4, 100, 90, [[5, 5, 9, 9]])]) == [(0, (0, 0, 90, 100))]
    with pytest.raises(ValueError, match=r"image id=9 \(9.png\): unknown size"):
        spec.plan([_record(9, 0, 0)])


@pytest.mark.parametrize(
    "settings",
    [
        {"tile_size": 0},
        {"tile_size": 64, "overlap": 64},
        {"overlap": -1},
        {"empty_tile_ratio": 1.5},
        {"min_visibility": -0.1},
        {"min_box_size": -1.0},
        {"seed": -1},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        TileSpec(**settings)


# ---------------------------------------------------------------- crop
def test_crop_border_rule():
    spec = TileSpec(tile_size=100, overlap=20, min_visibility=0.3, min_box_size=2.0)
    boxes_xyxy = [
        [60, 70, 66, 74],  # inside: kept exactly, shifted
        [144, 100, 152, 104],  # 6 of 8 px wide inside: visibility 0.75 -> clipped and kept
        [44, 60, 52, 64],  # 2 of 8 px inside: visibility 0.25 < 0.3 -> ignore region, counted
        [149, 100, 152, 103],  # visibility 1/3 >= 0.3, but 1 px wide inside < min_box_size -> ignore, counted
        [10, 10, 14, 14],  # outside: not in the tile, not counted
        [150, 60, 154, 64],  # touches the border from outside: not in the tile, not counted
        [50, 50, 150, 150],  # exactly the window: inside
    ]
    ignore_xyxy = [[20, 20, 60, 60], [0, 0, 30, 30], [140, 145, 160, 160]]
    raw = _raw((200, 220), boxes_xyxy, ignore_xyxy, num_dropped=2)
    tile = spec.crop(raw, (50, 50, 150, 150))
    assert np.array_equal(tile["image"], raw["image"][50:150, 50:150])
    assert not np.shares_memory(tile["image"], raw["image"])  # the full frame is not kept alive by the tile
    assert tile["boxes_xyxy"].dtype == np.float32
    assert tile["boxes_xyxy"].tolist() == [[10, 20, 16, 24], [94, 50, 100, 54], [0, 0, 100, 100]]
    assert tile["labels"].tolist() == [10, 11, 16]
    assert tile["ignore_xyxy"].tolist() == [[0, 0, 10, 10], [90, 95, 100, 100], [0, 10, 2, 14], [99, 50, 100, 53]]
    assert tile["num_dropped"] == 2 + 2


def test_crop_agrees_with_the_plan():
    """Objects the crop keeps are exactly those the plan counted, for every tile of an image."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 380, (200, 2))
    boxes_xyxy = np.concatenate([xy, xy + rng.uniform(2, 20, (200, 2))], 1).clip(0, 380).astype(np.float32)
    spec = TileSpec(tile_size=96, overlap=16, min_visibility=0.6, min_box_size=3.0)
    windows = tile_windows(380, 380, 96, 16)
    keep, ignore = tile_box_fate(boxes_xyxy, windows, spec.min_visibility, spec.min_box_size)  # (N, T)
    assert not (keep & ignore).any() and ignore.any() and keep.any()
    raw = _raw((380, 380), boxes_xyxy)
    for t, window in enumerate(windows.tolist()):
        tile = spec.crop(raw, tuple(window))
        assert len(tile["boxes_xyxy"]) == keep[:, t].sum() and tile["num_dropped"] == ignore[:, t].sum()
        assert tile["labels"].tolist() == (np.flatnonzero(keep[:, t]) + 10).tolist()


# ---------------------------------------------------------------- through the dataset and the data module
@pytest.fixture(scope="module")
def scene_splits(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("scenes"), SCENE)


def test_dataset_tiles_are_crops_of_the_scene_and_cover_every_object(scene_splits):
    split = scene_splits["train"]
    annotations = read_coco(split.ann_file)
    records = annotations.images
    spec = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=0.5, min_visibility=0.5)
    sides = np.concatenate([r.boxes_xyxy[:, 2:] - r.boxes_xyxy[:, :2] for r in records])
    assert sides.max() <= spec.overlap  # the premise of full coverage
    assert [r.num_objects for r in records] == [84, 60, 96]
    plan = spec.plan(records)
    dataset = DetectionDataset(annotations, split.images_dir, tiling=spec)
    assert len(dataset) == len(plan) and dataset.summary()["tiles"] == len(plan)
    assert len(plan) == 3 * 12  # crowded scenes: every tile holds an object

    full = [cv2.cvtColor(cv2.imread(f"{split.images_dir}/{r.file_name}"), cv2.COLOR_BGR2RGB) for r in records]
    whole_in_tiles: list[set[tuple[float, ...]]] = [set() for _ in records]
    num_cut = 0
    for i, (image_index, (x1, y1, x2, y2)) in enumerate(plan):
        sample = dataset[i]
        assert sample["image_id"] == records[image_index].image_id
        assert np.array_equal(sample["image"], full[image_index][y1:y2, x1:x2])
        assert sample["orig_size"] == (y2 - y1, x2 - x1) == sample["image"].shape[:2]
        assert len(sample["orig_boxes_xyxy"]) == len(sample["boxes_xyxy"]) + len(sample["ignore_xyxy"])
        num_cut += sample["num_dropped"]
        scene_xyxy = sample["boxes_xyxy"] + np.array([x1, y1, x1, y1], np.float32)
        whole_in_tiles[image_index].update(map(tuple, scene_xyxy.tolist()))
    assert num_cut > 0  # objects straddle tile borders: the border rule was exercised
    for record, seen in zip(records, whole_in_tiles):
        assert set(map(tuple, record.boxes_xyxy.tolist())) <= seen  # every object whole in at least one tile


def test_datamodule_trains_on_tiles_and_validates_on_whole_images(scene_splits):
    tiling = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=0.0)
    no_augmentation = TrainAugmentation(hflip=0.0, vflip=0.0, scale_range=(1.0, 1.0), photometric=0.0)
    dm = DetectionDataModule(
        synthetic=SCENE,
        cache_dir=str(Path(scene_splits["train"].ann_file).parents[2]),  # the scenes already generated
        train_tiling=tiling,
        train_augmentation=no_augmentation,
        eval_transform=EvalTransform(),
        batch_size=4,
        num_workers=0,
    )
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == len(tiling.plan(train.records)) and len(val) == SCENE.num_val
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (4, 3, 128, 128) and batch.image_sizes.tolist() == [[128, 128]] * 4
    assert all(len(t.boxes_xyxy) > 0 for t in batch.targets)  # empty_tile_ratio=0: object tiles only
    assert all((t.boxes_xyxy >= 0).all() and (t.boxes_xyxy <= 128).all() for t in batch.targets)
    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch.images.shape == (2, 3, 320, 416) and val_batch.image_sizes.tolist() == [[300, 400]] * 2


def test_large_scene_holds_hundreds_of_tiny_objects_across_tile_borders(tmp_path):
    spec = SyntheticSpec(
        image_size=(1500, 2000),
        density_side=256,  # 2000 x 1500 px = 45.8 squares of 256 px
        num_train=1,
        num_val=0,
        empty_fraction=0.0,
        dense_fraction=1.0,
        dense_min=8,  # 8..12 per 256 px square: 366..549 objects requested
        dense_max=12,
        size_mix=(0.5, 0.45, 0.05, 0.0),  # AI-TOD-like: nearly all below 16 x 16 px
    )
    split = ensure_synthetic_dataset(tmp_path, spec)["train"]
    (record,) = read_coco(split.ann_file).images
    assert (record.height, record.width) == (1500, 2000)
    assert 330 <= record.num_objects <= 549  # a few requested objects may find no free spot
    areas = (record.boxes_xyxy[:, 2:] - record.boxes_xyxy[:, :2]).prod(1)
    assert np.mean(areas <= 16**2) >= 0.9  # tiny
    windows = tile_windows(1500, 2000, 512, 64)  # (20, 4)
    keep, ignore = tile_box_fate(record.boxes_xyxy, windows, 1.0, 0.0)  # visibility 1: any cut object is "ignore"
    assert keep.sum(0).min() >= 5  # objects spread over the whole frame, not only in clusters
    assert ignore.any(1).sum() >= 10  # objects straddle tile borders
