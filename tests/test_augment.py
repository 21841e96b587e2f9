"""Scale-aware augmentation for tiny objects: the guarded zoom, box-only copy-paste, mosaic."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from tiny_cli import fit_tiny

from tod_lightning.data import CocoSplit, DetectionDataset, Mosaic, TinyCopyPaste, TrainAugmentation
from tod_lightning.data.transforms import ScaleAwareZoom

NUM_CLASSES = 5
TOL = 1e-3  # px: boxes travel through float32


def _raw(rng, hw=(96, 128), num_objects=20, sides=(2.0, 14.0), num_ignore=2, num_dropped=0) -> dict:
    """A raw sample: noise image (no zeros, so padding shows) with random boxes and ignore regions inside it."""
    h, w = hw
    wh = rng.uniform(*sides, (num_objects, 2))
    xy = rng.uniform(0, 1, (num_objects, 2)) * (np.array([w, h]) - wh)
    ignore_wh = rng.uniform(4, 12, (num_ignore, 2))
    ignore_xy = rng.uniform(0, 1, (num_ignore, 2)) * (np.array([w, h]) - ignore_wh)
    return {
        "image": rng.integers(1, 256, (h, w, 3), dtype=np.uint8),
        "boxes_xyxy": np.concatenate([xy, xy + wh], 1).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, num_objects).astype(np.int64),
        "ignore_xyxy": np.concatenate([ignore_xy, ignore_xy + ignore_wh], 1).astype(np.float32),
        "num_dropped": num_dropped,
    }


def _inter_area(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """(A, B) intersection areas."""
    a, b = a_xyxy[:, None], b_xyxy[None]
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.maximum(w, 0) * np.maximum(h, 0)


def _assert_valid_targets(out: dict, min_box_size: float) -> None:
    h, w = out["image"].shape[:2]
    boxes, ignore = out["boxes_xyxy"], out["ignore_xyxy"]
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(out["labels"]) == len(boxes)
    for b in (boxes, ignore):
        assert (b[:, :2] >= -TOL).all() and (b[:, 2] <= w + TOL).all() and (b[:, 3] <= h + TOL).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= min_box_size - TOL).all()
    assert ((out["labels"] >= 0) & (out["labels"] < NUM_CLASSES)).all()


# ---------------------------------------------------------------- scale-aware zoom
def _zoom_of_thin_object(transform, box_xyxy=(63, 58, 65, 70), ignore_xyxy=()) -> float:
    """The zoom applied to a 2x12 px object at the centre of a 128-px frame (read from its output width)."""
    out = transform(
        image=np.full((128, 128, 3), 128, np.uint8),
        boxes_xyxy=np.array([box_xyxy], np.float32),
        labels=np.array([0]),
        ignore_xyxy=np.asarray(ignore_xyxy, np.float32).reshape(-1, 4),
    )
    assert len(out["boxes_xyxy"]) == 1, out  # min_box_size is tiny in these tests: it is always kept
    return float(out["boxes_xyxy"][0, 2] - out["boxes_xyxy"][0, 0]) / (box_xyxy[2] - box_xyxy[0])


def _still(**kwargs) -> TrainAugmentation:
    return TrainAugmentation(hflip=0.0, vflip=0.0, photometric=0.0, min_box_size=0.1, **kwargs)


def test_guarded_zoom_keeps_a_two_pixel_object_at_four_pixels():
    guarded = _still(scale_range=(0.5, 3.0), min_object_size=4.0, seed=0)
    unguarded = _still(scale_range=(0.5, 3.0), seed=0)
    guarded_zooms = [_zoom_of_thin_object(guarded) for _ in range(60)]
    unguarded_zooms = [_zoom_of_thin_object(unguarded) for _ in range(60)]
    assert min(guarded_zooms) >= 2.0 - 1e-3  # 4 px / 2 px
    assert max(guarded_zooms) > 2.5  # still random above the floor
    assert min(unguarded_zooms) < 1.0 and sum(z < 2.0 for z in unguarded_zooms) > 20


def test_guard_is_capped_by_the_range_and_what_it_cannot_save_becomes_ignore():
    capped = _still(scale_range=(0.5, 1.5), min_object_size=4.0, seed=1)
    assert all(abs(_zoom_of_thin_object(capped) - 1.5) < 1e-3 for _ in range(10))  # needs 2x, gets the 1.5x max
    strict = TrainAugmentation(
        hflip=0.0, vflip=0.0, photometric=0.0, scale_range=(0.5, 1.5), min_object_size=4.0, min_box_size=3.5, seed=1
    )
    image = np.full((128, 128, 3), 128, np.uint8)
    out = strict(image=image, boxes_xyxy=np.array([[63, 58, 65, 70]], np.float32), labels=np.array([0]), ignore_xyxy=[])
    assert out["num_dropped"] == 1 and len(out["boxes_xyxy"]) == 0
    np.testing.assert_allclose(out["ignore_xyxy"], [[64 - 1.5, 64 - 9, 64 + 1.5, 64 + 9]], atol=1e-3)


def test_guard_protects_the_chosen_quantile_and_ignores_ignore_regions():
    boxes = np.array([[63, 58, 65, 70], [20, 20, 28, 28]], np.float32)  # shorter sides 2 and 8 px
    zoom = ScaleAwareZoom((0.5, 3.0), min_object_size=4.0, protect_quantile=0.0)
    # albumentations' internal boxes: normalised xyxy + the row-index column
    normalised = np.concatenate([boxes / 128, [[0], [1]]], 1)
    assert zoom.zoom_floor(normalised, (128, 128), num_objects=2) == pytest.approx(2.0)
    assert ScaleAwareZoom((0.5, 3.0), 4.0, protect_quantile=1.0).zoom_floor(normalised, (128, 128), 2) == 0.5
    assert zoom.zoom_floor(normalised, (128, 128), num_objects=0) == 0.0  # both rows are ignore regions
    # through the pipeline: a 1-px ignore region does not raise the floor protecting an 8-px object
    guarded = _still(scale_range=(0.5, 3.0), min_object_size=4.0, seed=2)
    zooms = [_zoom_of_thin_object(guarded, (60, 60, 68, 68), ignore_xyxy=[[5, 5, 6, 6]]) for _ in range(40)]
    assert min(zooms) < 0.75 and min(zooms) >= 0.5 - 1e-3


def test_guarded_zoom_on_an_empty_image_uses_the_drawn_factor():
    guarded = TrainAugmentation(photometric=0.0, scale_range=(0.5, 0.5), min_object_size=4.0, seed=0)
    image = np.full((64, 64, 3), 200, np.uint8)
    out = guarded(image=image, boxes_xyxy=np.zeros((0, 4)), labels=np.zeros(0), ignore_xyxy=np.zeros((0, 4)))
    assert out["boxes_xyxy"].shape == (0, 4) and out["num_dropped"] == 0
    assert (out["image"] > 0).mean() == pytest.approx(0.25, abs=0.02)  # zoomed out 0.5x: a quarter of the frame


def test_guard_measures_objects_after_the_resize():
    # 256-px frame resized to 128: the 4-px-wide object is 2 px when the zoom sees it
    guarded = _still(scale_range=(0.5, 3.0), min_object_size=4.0, image_size=128, seed=3)
    for _ in range(30):
        out = guarded(
            image=np.full((256, 256, 3), 128, np.uint8),
            boxes_xyxy=np.array([[126, 116, 130, 140]], np.float32),
            labels=np.array([1]),
            ignore_xyxy=np.zeros((0, 4), np.float32),
        )
        assert out["image"].shape == (128, 128, 3)
        assert out["boxes_xyxy"][0, 2] - out["boxes_xyxy"][0, 0] >= 4.0 - 1e-3


def test_defaults_keep_the_plain_zoom_and_bad_guard_settings_are_rejected():
    import albumentations as A

    default = TrainAugmentation()
    affines = [t for t in default.compose.transforms if isinstance(t, A.Affine)]
    assert len(affines) == 1 and not isinstance(affines[0], ScaleAwareZoom)
    assert any(isinstance(t, ScaleAwareZoom) for t in TrainAugmentation(min_object_size=3.0).compose.transforms)
    with pytest.raises(ValueError, match="min_object_size"):
        TrainAugmentation(min_object_size=0.0)
    with pytest.raises(ValueError, match="protect_quantile"):
        TrainAugmentation(min_object_size=3.0, protect_quantile=1.5)


def test_guarded_augmentation_accounts_for_every_object_and_is_deterministic():
    rng = np.random.default_rng(0)
    first, second = (TrainAugmentation(scale_range=(0.5, 2.0), min_object_size=3.0, seed=7) for _ in range(2))
    for _ in range(20):
        raw = _raw(rng, (96, 96), 30, sides=(1.0, 10.0))
        a = first(
            image=raw["image"], boxes_xyxy=raw["boxes_xyxy"], labels=raw["labels"], ignore_xyxy=raw["ignore_xyxy"]
        )
        b = second(
            image=raw["image"], boxes_xyxy=raw["boxes_xyxy"], labels=raw["labels"], ignore_xyxy=raw["ignore_xyxy"]
        )
        assert len(a["boxes_xyxy"]) + a["num_dropped"] == 30
        _assert_valid_targets(a, 2.0)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["boxes_xyxy"], b["boxes_xyxy"])


# ---------------------------------------------------------------- copy-paste
def _find_source(box_xyxy, label, pool):
    """The ``(source, row)`` pairs whose box is ``box_xyxy`` moved by a whole number of pixels, with its label."""
    found = []
    for s, raw in enumerate(pool):
        shift = box_xyxy[None] - raw["boxes_xyxy"]  # (N, 4)
        same = (np.abs(shift[:, :2] - shift[:, 2:]) < TOL).all(1)  # same size
        same &= (np.abs(shift - np.round(shift)) < TOL).all(1) & (raw["labels"] == label)
        found += [(s, int(i)) for i in np.flatnonzero(same)]
    return found


def test_copy_paste_invariants_pixels_and_accounting():
    rng = np.random.default_rng(0)
    paste = TinyCopyPaste(p=1.0, num_sources=2, max_object_size=12.0, context=2, num_paste=(2, 6), min_box_size=2.0)
    total_pasted, from_self = 0, 0
    for seed in range(20):
        raw = _raw(rng, (96, 128), 15, sides=(2.0, 16.0), num_dropped=3)
        sources = [_raw(rng, (80, 72), 15, sides=(2.0, 16.0)) for _ in range(2)]
        out = paste(raw, sources, np.random.default_rng(seed))
        n = len(raw["boxes_xyxy"])
        _assert_valid_targets(out, 2.0)
        # inputs unchanged and first; pastes appended; ignore regions and the dropped count untouched
        np.testing.assert_array_equal(out["boxes_xyxy"][:n], raw["boxes_xyxy"])
        np.testing.assert_array_equal(out["labels"][:n], raw["labels"])
        np.testing.assert_array_equal(out["ignore_xyxy"], raw["ignore_xyxy"])
        assert out["num_dropped"] == 3 and out["image"].shape == raw["image"].shape
        pasted_xyxy, pasted_labels = out["boxes_xyxy"][n:], out["labels"][n:]
        assert len(pasted_xyxy) <= 6
        total_pasted += len(pasted_xyxy)
        wh = pasted_xyxy[:, 2:] - pasted_xyxy[:, :2]
        assert (wh.max(1) <= 12.0 + TOL).all()
        # the pasted boxes with their margin overlap no input box, no ignore region and no other paste
        margin_xyxy = pasted_xyxy + np.array([-2, -2, 2, 2], np.float32)
        assert (_inter_area(margin_xyxy, np.concatenate([raw["boxes_xyxy"], raw["ignore_xyxy"]])) == 0).all()
        overlap = _inter_area(margin_xyxy, margin_xyxy)
        assert (overlap[~np.eye(len(margin_xyxy), dtype=bool)] == 0).all()
        # each paste is an integer shift of a source object, and its centre pixels are the source's pixels
        pool = [raw, *sources]
        for box, label in zip(pasted_xyxy, pasted_labels):
            matches = _find_source(box, label, pool)
            assert len(matches) == 1, (box, matches)
            s, i = matches[0]
            from_self += s == 0
            src_box = pool[s]["boxes_xyxy"][i]
            dx, dy = np.round(box[:2] - src_box[:2]).astype(int)
            # pixels whose centre is inside the box are fully opaque
            x0, y0 = np.ceil(src_box[:2] - 0.5).astype(int)
            x1, y1 = np.floor(src_box[2:] - 0.5).astype(int) + 1
            np.testing.assert_array_equal(
                out["image"][y0 + dy : y1 + dy, x0 + dx : x1 + dx], pool[s]["image"][y0:y1, x0:x1]
            )
    assert total_pasted >= 40 and 0 < from_self < total_pasted


def test_copy_paste_feathers_the_margin():
    src = {
        "image": np.full((32, 32, 3), 160, np.uint8),
        "boxes_xyxy": np.array([[10, 10, 14, 14]], np.float32),
        "labels": np.array([2]),
        "ignore_xyxy": np.zeros((0, 4), np.float32),
        "num_dropped": 0,
    }
    dst = {**src, "image": np.zeros((32, 32, 3), np.uint8), "boxes_xyxy": np.zeros((0, 4), np.float32)}
    dst["labels"] = np.zeros(0, np.int64)
    paste = TinyCopyPaste(p=1.0, num_sources=1, include_self=False, context=2, num_paste=(1, 1))
    for seed in range(5):
        out = paste(dst, [src], np.random.default_rng(seed))
        ((x0, y0, x1, y1),) = out["boxes_xyxy"].astype(int)
        assert (x1 - x0, y1 - y0) == (4, 4) and out["labels"].tolist() == [2]
        # along a row through the box: the margin's pixel centres are 1.5 and 0.5 px out: opacity 0.25, 0.75
        np.testing.assert_array_equal(out["image"][y0 + 1, x0 - 2 : x1 + 2, 0], [40, 120, 160, 160, 160, 160, 120, 40])
        assert out["image"][y0 - 1, x0 - 1, 0] == 90  # 0.75 * 0.75 * 160: the corner is rounded off
        # 4x4 box at 160; its 4 sides (16 px each ring) at 120 and 40; corners 0.75^2, 0.75*0.25 (x2), 0.25^2
        assert out["image"].sum() == 3 * (16 * 160 + 16 * (120 + 40) + 4 * 90 + 8 * 30 + 4 * 10)


def test_copy_paste_candidates_exclude_ignore_regions_crowded_and_large_objects():
    rng = np.random.default_rng(1)
    src = {
        "image": rng.integers(1, 256, (64, 64, 3), dtype=np.uint8),
        "boxes_xyxy": np.array(
            [
                [5, 5, 9, 9],  # clean tiny object: the only candidate
                [30, 30, 34, 34],  # neighbours 1 px apart: each margin holds a part of the other
                [35, 30, 39, 34],
                [45, 5, 49, 9],  # margin overlaps the ignore region
                [5, 40, 30, 60],  # too large
            ],
            np.float32,
        ),
        "labels": np.array([0, 1, 1, 2, 3]),
        "ignore_xyxy": np.array([[50, 5, 60, 20]], np.float32),
        "num_dropped": 0,
    }
    paste = TinyCopyPaste(p=1.0, num_sources=1, include_self=False, max_object_size=16, num_paste=(3, 3))
    index, _ = paste.candidates(src)
    assert index.tolist() == [0]
    empty = {**src, "boxes_xyxy": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    empty["ignore_xyxy"] = np.zeros((0, 4), np.float32)
    for seed in range(5):
        out = paste(empty, [src], np.random.default_rng(seed))
        assert out["labels"].tolist() == [0]  # one candidate: pasted once, never the ignore region


def test_copy_paste_class_balance_oversamples_rare_classes():
    rng = np.random.default_rng(2)
    # 45 objects of class 0 and 5 of class 1 on a grid, each well apart from the others
    xy = np.stack(np.meshgrid(np.arange(10) * 24 + 8, np.arange(5) * 24 + 8), -1).reshape(-1, 2)
    src = {
        "image": rng.integers(1, 256, (128, 256, 3), dtype=np.uint8),
        "boxes_xyxy": np.concatenate([xy, xy + 4], 1).astype(np.float32),
        "labels": np.array([1] * 5 + [0] * 45),
        "ignore_xyxy": np.zeros((0, 4), np.float32),
        "num_dropped": 0,
    }
    dst = {**src, "boxes_xyxy": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    share = {}
    for balance in (True, False):
        paste = TinyCopyPaste(p=1.0, num_sources=1, include_self=False, num_paste=(1, 1), class_balance=balance)
        labels = [paste(dst, [src], np.random.default_rng(s))["labels"][0] for s in range(300)]
        share[balance] = np.mean(np.array(labels) == 1)
    assert 0.4 < share[True] < 0.6 and share[False] < 0.2


def test_copy_paste_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    raw, sources = _raw(rng), [_raw(rng) for _ in range(2)]
    before = raw["image"].copy()
    paste = TinyCopyPaste(p=1.0)
    a, b = (paste(raw, sources, np.random.default_rng(11)) for _ in range(2))
    c = paste(raw, sources, np.random.default_rng(12))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes_xyxy"], b["boxes_xyxy"])
    assert not np.array_equal(a["image"], c["image"])
    np.testing.assert_array_equal(raw["image"], before)  # the input image is not modified


# ---------------------------------------------------------------- mosaic
def test_mosaic_invariants_and_accounting():
    rng = np.random.default_rng(0)
    mosaic = Mosaic(p=1.0, scale_range=(0.5, 1.5), min_visibility=0.5, min_box_size=2.0)
    kept = shrunk = 0
    for seed in range(30):
        sizes = [(96, 128), (64, 80), (120, 100), (48, 48)]
        inputs = [_raw(rng, hw, 25, sides=(1.0, 16.0), num_dropped=k) for k, hw in enumerate(sizes)]
        out = mosaic(inputs[0], inputs[1:], np.random.default_rng(seed))
        assert out["image"].shape == (96, 128, 3)
        _assert_valid_targets(out, 2.0)
        assert (out["ignore_xyxy"][:, 2:] - out["ignore_xyxy"][:, :2] >= 1.0 - TOL).all()
        # accounting over the four inputs: kept + counted == in (with the inputs' own dropped counts)
        assert (
            sum(len(x["boxes_xyxy"]) + x["num_dropped"] for x in inputs) == len(out["boxes_xyxy"]) + out["num_dropped"]
        )
        kept += len(out["boxes_xyxy"])
        shrunk += len(out["ignore_xyxy"])
    assert kept > 300 and shrunk > 30


def test_mosaic_fixed_output_size_fill_and_exact_pixels_at_scale_one():
    rng = np.random.default_rng(1)
    inputs = [_raw(rng, (64, 64), 5) for _ in range(4)]
    # every quadrant is wider or higher than 64 px on one axis at least: the fill shows
    mosaic = Mosaic(p=1.0, output_size=(150, 140), scale_range=(1.0, 1.0), fill=0)
    layout = mosaic.layout([x["image"].shape[:2] for x in inputs], np.random.default_rng(5))
    out = mosaic(inputs[0], inputs[1:], np.random.default_rng(5))
    assert out["image"].shape == (150, 140, 3)
    for k in range(4):
        x0, y0, x1, y1 = layout.quadrants_xyxy[k]
        ox, oy = layout.offsets_xy[k].astype(int)
        image = inputs[layout.order[k]]["image"]
        expected = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)  # the fill where the 64-px image does not reach
        sy0, sx0 = max(y0 - oy, 0), max(x0 - ox, 0)
        sy1, sx1 = min(y1 - oy, 64), min(x1 - ox, 64)
        expected[sy0 + oy - y0 : sy1 + oy - y0, sx0 + ox - x0 : sx1 + ox - x0] = image[sy0:sy1, sx0:sx1]
        np.testing.assert_array_equal(out["image"][y0:y1, x0:x1], expected)
    assert (out["image"] == 0).any()


def test_mosaic_object_straddling_the_centre_is_clipped_ignored_or_dropped_never_sub_pixel():
    """An object cut by the vertical centre line: 3 of 6 px inside -> kept, clipped; 1.5 of 6 -> ignore region;
    0.5 of 6 -> dropped. All counted."""
    mosaic = Mosaic(p=1.0, center_range=(0.5, 0.5), scale_range=(1.0, 1.0), min_visibility=0.5, min_box_size=2.0)
    rng = np.random.default_rng(2)
    images = [rng.integers(1, 256, (64, 64, 3), dtype=np.uint8) for _ in range(4)]
    checked = 0
    for seed in range(40):
        layout = mosaic.layout([(64, 64)] * 4, np.random.default_rng(seed))
        k = int(np.flatnonzero(layout.order == 0)[0])  # the primary's quadrant
        x0, y0, x1, y1 = layout.quadrants_xyxy[k]
        ox, oy = layout.offsets_xy[k]
        inside_left = x1 == 32  # the centre line is the quadrant's right side (else its left side)
        y_top = (y0 + y1) / 2 - 3
        # canvas x of each object: `inside` px on the quadrant's side of the centre line, 6 - inside beyond it
        canvas_x1 = np.array([32 - inside if inside_left else 32 + inside - 6 for inside in (3.0, 1.5, 0.5)])
        boxes_canvas = np.stack([canvas_x1, np.full(3, y_top), canvas_x1 + 6, np.full(3, y_top + 6)], 1)
        boxes_image = (boxes_canvas - [ox, oy, ox, oy]).astype(np.float32)
        if boxes_image.min() < 0 or boxes_image.max() > 64:  # this crop does not reach across the centre line
            continue
        checked += 1
        raw = {"image": images[0], "boxes_xyxy": boxes_image, "labels": np.array([1, 2, 3]), "ignore_xyxy": []}
        empty = [{"image": im, "boxes_xyxy": np.zeros((0, 4)), "labels": [], "ignore_xyxy": []} for im in images[1:]]
        out = mosaic({**raw, "num_dropped": 0}, [{**e, "num_dropped": 0} for e in empty], np.random.default_rng(seed))
        side = (lambda x: (x, 32)) if inside_left else (lambda x: (32, x))
        assert out["labels"].tolist() == [1] and out["num_dropped"] == 2
        x_lo, x_hi = side(canvas_x1[0] if inside_left else canvas_x1[0] + 6)
        np.testing.assert_allclose(out["boxes_xyxy"], [[x_lo, y_top, x_hi, y_top + 6]], atol=1e-4)
        x_lo, x_hi = side(canvas_x1[1] if inside_left else canvas_x1[1] + 6)
        np.testing.assert_allclose(out["ignore_xyxy"], [[x_lo, y_top, x_hi, y_top + 6]], atol=1e-4)
    assert checked >= 10


def test_mosaic_downscale_never_leaves_a_box_below_min_size():
    rng = np.random.default_rng(3)
    mosaic = Mosaic(p=1.0, scale_range=(0.5, 0.5), center_range=(0.5, 0.5), min_visibility=0.0)
    raws = []
    for _ in range(4):
        raw = _raw(rng, (64, 64), 0, num_ignore=0)
        # 3-px objects (1.5 px after the 0.5 rescale) and 6-px ones (3 px), at the image centre: never cut
        raw["boxes_xyxy"] = np.array([[30, 30, 33, 33], [20, 40, 26, 46]], np.float32)
        raw["labels"] = np.array([0, 4])
        raws.append(raw)
    out = mosaic(raws[0], raws[1:], np.random.default_rng(0))
    assert out["labels"].tolist() == [4] * 4 and out["num_dropped"] == 4
    np.testing.assert_allclose(out["ignore_xyxy"][:, 2:] - out["ignore_xyxy"][:, :2], 1.5, atol=1e-5)


def test_mosaic_is_deterministic_and_rejects_bad_settings():
    rng = np.random.default_rng(4)
    inputs = [_raw(rng) for _ in range(4)]
    mosaic = Mosaic(p=1.0)
    a, b = (mosaic(inputs[0], inputs[1:], np.random.default_rng(9)) for _ in range(2))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes_xyxy"], b["boxes_xyxy"])
    np.testing.assert_array_equal(a["ignore_xyxy"], b["ignore_xyxy"])
    with pytest.raises(ValueError, match="sources"):
        mosaic(inputs[0], inputs[1:3], np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_visibility"):
        Mosaic(min_visibility=1.5)
    with pytest.raises(ValueError, match="num_paste"):
        TinyCopyPaste(num_paste=(3, 1))


# ---------------------------------------------------------------- through the dataset and the CLI
def _write_tiny_coco(root, num_images=4, per_image=6) -> CocoSplit:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(num_images):
        cv2.imwrite(str(root / "images" / f"{i}.png"), rng.integers(1, 256, (64, 64, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 64})
        for j in range(per_image):  # a 3x2 grid of 4..9 px objects, then one crowd
            x, y, side = 4 + 20 * (j % 3), 8 + 28 * (j // 3), 4 + j
            annotations.append(
                {"id": 100 * i + j, "image_id": i + 1, "category_id": j % 3 + 1, "bbox": [x, y, side, side]}
            )
        annotations.append(
            {"id": 100 * i + 99, "image_id": i + 1, "category_id": 1, "bbox": [50, 50, 10, 10], "iscrowd": 1}
        )
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return CocoSplit(images_dir=str(root / "images"), ann_file=str(root / "ann.json"))


def test_mosaic_and_copy_paste_through_the_dataset(tmp_path):
    split = _write_tiny_coco(tmp_path)
    mixing = [Mosaic(p=1.0, scale_range=(0.75, 1.25)), TinyCopyPaste(p=1.0, num_paste=(1, 4), max_object_size=10)]
    datasets = [DetectionDataset(split.load(), split.images_dir, None, mixing=mixing, seed=3) for _ in range(2)]
    pasted = 0
    for index in range(4):
        sample, again = datasets[0][index], datasets[1][index]
        assert sample["image"].shape == (64, 64, 3)
        _assert_valid_targets(sample, 2.0)
        assert (sample["labels"] < 3).all()
        # the mosaic accounts for its 4 x 6 objects; copy-paste only adds
        extra = len(sample["boxes_xyxy"]) + sample["num_dropped"] - 4 * 6
        assert 0 <= extra <= 4
        pasted += extra
        assert len(sample["orig_boxes_xyxy"]) == 7  # evaluation annotations stay the primary image's own
        np.testing.assert_array_equal(sample["image"], again["image"])  # same seed, same samples
        np.testing.assert_array_equal(sample["boxes_xyxy"], again["boxes_xyxy"])
    assert pasted > 0
    # and with the guarded per-image transform after the mixing
    transform = TrainAugmentation(scale_range=(0.75, 1.5), min_object_size=3.0, seed=0)
    dataset = DetectionDataset(split.load(), split.images_dir, transform, mixing=mixing, seed=3)
    for index in range(4):
        _assert_valid_targets(dataset[index], 2.0)


def test_augment_tiny_config_trains_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit_tiny(tmp_path, "configs/data/augment_tiny.yaml", num_train=6, num_val=2)
    data = cli.datamodule
    assert [type(m).__name__ for m in data.train_mixing] == ["Mosaic", "TinyCopyPaste"]
    assert data.train_augmentation.min_object_size == 3.0
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
