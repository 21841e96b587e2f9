"""Sliced inference: the tile grid, the merge rule against an exact per-tile oracle, equivalence with whole-image
inference, batching, and whole-image validation through the real CLI on tiled training."""

from __future__ import annotations

import importlib.util
import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_cli import ROOT, fit_tiny, latest_checkpoint, quiet_trainer_args, tiny_data_args
from torchvision.ops import box_iou

from tod_lightning.cli import main as cli_main
from tod_lightning.data.collate import collate_detection
from tod_lightning.metrics import AITODMetric
from tod_lightning.models import FPN, DenseHead, Detector, PostProcessor, SlicedInference, TimmBackbone
from tod_lightning.ops.tiles import tile_windows
from tod_lightning.structures import Detections
from tod_lightning.task import DetectionTask


# ---------------------------------------------------------------------------------------------- (a) tile grid
@pytest.mark.parametrize(
    "height, width, tile, overlap",
    [(1500, 2000, 512, 64), (300, 400, 128, 32), (129, 128, 128, 0), (257, 1000, 256, 255), (256, 256, 256, 64)],
)
def test_tile_windows_cover_overlap_and_end_at_the_border(height, width, tile, overlap):
    windows = tile_windows(height, width, tile, overlap)
    x1, y1, x2, y2 = windows.T
    assert windows.dtype == np.int64 and (x1 >= 0).all() and (y1 >= 0).all()
    assert (x2 <= width).all() and (y2 <= height).all()
    assert ((x2 - x1) == min(tile, width)).all() and ((y2 - y1) == min(tile, height)).all()  # full-size tiles
    covered = np.zeros((height, width), np.int64)
    for a, b, c, d in windows:
        covered[b:d, a:c] += 1
    assert covered.min() >= 1, "every pixel is in a tile"
    for starts, ends, length in ((np.unique(x1), np.unique(x2), width), (np.unique(y1), np.unique(y2), height)):
        assert starts[0] == 0 and ends[-1] == length, "first tile at 0, last tile ends at the border"
        assert (ends[:-1] - starts[1:] >= overlap).all(), "adjacent tiles overlap by >= overlap"
        assert len(starts) == len(ends) == (1 if length <= tile else -(-(length - tile) // (tile - overlap)) + 1)
    assert len(windows) == len(np.unique(x1)) * len(np.unique(y1))


def test_objects_no_larger_than_the_overlap_lie_whole_in_some_tile():
    rng = np.random.default_rng(0)
    windows = tile_windows(1500, 2000, 512, 64)
    xy = rng.uniform(0, [2000 - 64, 1500 - 64], (2000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 64, (2000, 2))], 1)  # (N, 4) sides <= overlap
    inside = (
        (boxes[:, None, 0] >= windows[None, :, 0])
        & (boxes[:, None, 1] >= windows[None, :, 1])
        & (boxes[:, None, 2] <= windows[None, :, 2])
        & (boxes[:, None, 3] <= windows[None, :, 3])
    )  # (N, T)
    assert inside.any(1).all()


def test_image_smaller_than_a_tile_is_one_tile():
    assert tile_windows(100, 80, 128, 16).tolist() == [[0, 0, 80, 100]]
    assert tile_windows(100, 300, 128, 16)[:, 3].tolist() == [100, 100, 100]  # short axis: one row, 100 px high
    with pytest.raises(ValueError, match="overlap < tile_size"):
        tile_windows(100, 100, 64, 64)


# ------------------------------------------------------------------------------------ (b) the oracle detector
def coordinate_image_uint8(height: int, width: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 image whose pixels encode their own coordinates (< 4096): ``x // 16``, ``y // 16``,
    ``16 * (x % 16) + y % 16``; so pixel (0, 0) of a tile carries the tile's origin in the image."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([xs // 16, ys // 16, 16 * (xs % 16) + ys % 16], axis=-1).astype(np.uint8)


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """:func:`coordinate_image_uint8` as the detector sees it: ``(1, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(coordinate_image_uint8(height, width)).permute(2, 0, 1)[None].float() / 255.0


class OracleDetector:
    """Reads each tile's origin from its pixels; the "output" is just those origins."""

    size_divisor = 32  # tiles are padded like a real detector's input (pixel (0, 0) is never padding)
    num_classes = 3

    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(self, tiles01: torch.Tensor) -> torch.Tensor:
        assert tiles01.shape[-2] % 32 == 0 and tiles01.shape[-1] % 32 == 0
        self.batch_sizes.append(tiles01.shape[0])
        code = (tiles01[:, :, 0, 0] * 255.0).round()  # (n, 3) the pixel values of coordinate_image_uint8
        return torch.stack([code[:, 0] * 16 + code[:, 2] // 16, code[:, 1] * 16 + code[:, 2] % 16], 1)  # (n, 2) x1, y1


class OraclePostProcessor:
    """Returns, for each tile, exactly the ground truth visible in it, clipped to the tile, in tile pixels.

    ``partial_score``: if set, boxes cut by the tile get this score instead of their object's (a confident
    truncated box must still lose to the full one).
    """

    nms_iou = 0.6

    def __init__(self, gt_boxes_xyxy, gt_labels, gt_scores, max_per_image=1500, partial_score=None):
        self.gt_boxes_xyxy, self.gt_labels, self.gt_scores = gt_boxes_xyxy, gt_labels, gt_scores
        self.max_per_image, self.partial_score = max_per_image, partial_score
        self.num_raw = 0

    def __call__(self, origins_xy: torch.Tensor, tile_sizes: torch.Tensor) -> list[Detections]:
        out = []
        for (x0, y0), (h, w) in zip(origins_xy.tolist(), tile_sizes.tolist()):
            window = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
            clipped = torch.cat(
                [
                    torch.maximum(self.gt_boxes_xyxy[:, :2], window[:2]),
                    torch.minimum(self.gt_boxes_xyxy[:, 2:], window[2:]),
                ],
                1,
            )
            visible = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            scores = self.gt_scores.clone()
            if self.partial_score is not None:
                scores[(clipped != self.gt_boxes_xyxy).any(1)] = self.partial_score
            order = torch.argsort(scores[visible], descending=True)
            boxes = (clipped[visible] - window[:2].repeat(2))[order]
            out.append(Detections(boxes, scores[visible][order], self.gt_labels[visible][order]))
            self.num_raw += int(visible.sum())
        return out


def straddling_scene(seed: int = 0, height: int = 1500, width: int = 2000, tile: int = 512, overlap: int = 64):
    """Non-overlapping 2-30 px boxes, most of them centred on inner tile edges and tile corners: ``(N, 4)``."""
    rng = np.random.default_rng(seed)
    windows = tile_windows(height, width, tile, overlap)
    x_edges = np.unique(np.concatenate([windows[:, 0], windows[:, 2]]))
    y_edges = np.unique(np.concatenate([windows[:, 1], windows[:, 3]]))
    x_edges, y_edges = x_edges[(x_edges > 0) & (x_edges < width)], y_edges[(y_edges > 0) & (y_edges < height)]
    boxes: list[np.ndarray] = []
    for kind in ["corner"] * 150 + ["x_edge"] * 150 + ["y_edge"] * 150 + ["free"] * 100:
        for _ in range(50):  # rejection sampling until the box touches no other
            w, h = rng.uniform(2, 30, 2)
            cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
            if kind in ("corner", "x_edge"):
                cx = rng.choice(x_edges) + rng.uniform(-w / 2, w / 2)
            if kind in ("corner", "y_edge"):
                cy = rng.choice(y_edges) + rng.uniform(-h / 2, h / 2)
            box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                continue
            if boxes:
                others = np.stack(boxes)
                gap = 1.0
                apart = (
                    (others[:, 0] > box[2] + gap)
                    | (others[:, 2] < box[0] - gap)
                    | (others[:, 1] > box[3] + gap)
                    | (others[:, 3] < box[1] - gap)
                )
                if not apart.all():
                    continue
            boxes.append(box)
            break
    return torch.tensor(np.stack(boxes), dtype=torch.float32)


def tiles_seeing(gt_boxes_xyxy: torch.Tensor, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per object: how many tiles see part of it, how many see it whole."""
    w = torch.as_tensor(windows, dtype=torch.float32)
    lt, rb = (
        torch.maximum(gt_boxes_xyxy[:, None, :2], w[None, :, :2]),
        torch.minimum(gt_boxes_xyxy[:, None, 2:], w[None, :, 2:]),
    )
    inter_wh = (rb - lt).clamp(min=0)  # (N, T, 2)
    part = (inter_wh > 0).all(-1)  # (N, T)
    whole = (gt_boxes_xyxy[:, None, :2] >= w[None, :, :2]).all(-1) & (gt_boxes_xyxy[:, None, 2:] <= w[None, :, 2:]).all(
        -1
    )
    return part.sum(1), whole.sum(1)


@pytest.mark.parametrize("partial_score", [None, 1.0])
def test_oracle_tiles_merge_to_every_object_exactly_once_with_its_full_box(partial_score):
    height, width, tile, overlap = 1500, 2000, 512, 64
    gt_boxes_xyxy = straddling_scene(0, height, width, tile, overlap)
    n = len(gt_boxes_xyxy)
    gen = torch.Generator().manual_seed(0)
    gt_labels = torch.randint(0, 3, (n,), generator=gen)
    gt_scores = torch.rand(n, generator=gen) * 0.9 + 0.05
    # The scene is the hard case the merge exists for: many objects cut by an inner edge, many at a corner.
    seen_by, whole_in = tiles_seeing(gt_boxes_xyxy, tile_windows(height, width, tile, overlap))
    assert n >= 400 and (whole_in >= 1).all()
    assert ((seen_by > whole_in) & (whole_in >= 1)).sum() >= 300, "objects truncated by some tile"
    assert (seen_by >= 4).sum() >= 100, "objects at a tile corner"

    detector, post = (
        OracleDetector(),
        OraclePostProcessor(gt_boxes_xyxy, gt_labels, gt_scores, partial_score=partial_score),
    )
    sliced = SlicedInference(tile_size=tile, overlap=overlap, tile_batch_size=4)
    (merged,) = sliced(detector, post, coordinate_image(height, width), torch.tensor([[height, width]]))
    assert post.num_raw > n + 400, "before the merge, objects on tile borders are detected several times"
    assert detector.batch_sizes == [4] * 5  # 5 x 4 tiles of 512 px, 4 at a time

    assert len(merged.scores) == n, "every object exactly once"
    iou = box_iou(merged.boxes_xyxy, gt_boxes_xyxy)  # (n, n)
    best, match = iou.max(1)
    assert best.min() > 0.99, "full boxes, not truncated ones"
    assert sorted(match.tolist()) == list(range(n)), "no object twice, none missing"
    assert torch.equal(merged.labels, gt_labels[match])
    assert (merged.scores[:-1] >= merged.scores[1:]).all()
    if partial_score is None:
        assert torch.equal(merged.scores, gt_scores[match])


def test_merge_keeps_the_top_max_per_image_by_score():
    height, width = 1500, 2000
    gt_boxes_xyxy = straddling_scene(1, height, width)
    n = len(gt_boxes_xyxy)
    gt_scores = torch.linspace(0.99, 0.1, n)
    post = OraclePostProcessor(gt_boxes_xyxy, torch.zeros(n, dtype=torch.int64), gt_scores, max_per_image=50)
    post_all = OraclePostProcessor(gt_boxes_xyxy, torch.zeros(n, dtype=torch.int64), gt_scores)
    # Per-tile cap of 50 is not binding here (a 512 tile of this scene holds fewer boxes), the image cap is.
    images01, sizes = coordinate_image(height, width), torch.tensor([[height, width]])
    (capped,) = SlicedInference(512, 64)(OracleDetector(), post, images01, sizes)
    (full,) = SlicedInference(512, 64)(OracleDetector(), post_all, images01, sizes)
    assert len(full.scores) == n and len(capped.scores) == 50
    assert torch.equal(capped.scores, full.scores[:50]) and torch.equal(capped.boxes_xyxy, full.boxes_xyxy[:50])


def test_oracle_batched_tiles_equal_one_tile_at_a_time_over_a_batch_of_images():
    # Two images of different sizes in one padded batch (the second one smaller than a tile on one axis).
    scene = straddling_scene(2, 700, 900, 256, 48)
    images01 = torch.zeros(2, 3, 704, 928)
    images01[0, :, :700, :900] = coordinate_image(700, 900)[0]
    images01[1, :, :200, :900] = coordinate_image(200, 900)[0]
    sizes = torch.tensor([[700, 900], [200, 900]])
    n = len(scene)
    post = OraclePostProcessor(scene, torch.zeros(n, dtype=torch.int64), torch.rand(n) * 0.9 + 0.05)
    results = {}
    for bs in (1, 7):
        detector = OracleDetector()
        results[bs] = SlicedInference(256, 48, tile_batch_size=bs)(detector, post, images01, sizes)
        assert max(detector.batch_sizes) == bs
    one, many = results[1], results[7]
    assert len(one) == 2 and len(one[0].scores) == n
    in_second = (scene[:, 3] <= 200).sum()  # objects whole in the second (cropped) image's 200 px
    assert len(one[1].scores) >= in_second
    for a, b in zip(one, many):
        assert torch.equal(a.boxes_xyxy, b.boxes_xyxy) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels)


# ------------------------------------------------------------------ (c), (d) a real (untrained) detector
def _detector() -> Detector:
    return Detector(
        TimmBackbone("resnet18", pretrained=False, out_strides=[4, 8, 16, 32]),
        [partial(FPN, out_channels=32, min_level=2, max_level=4)],
        partial(DenseHead, num_convs=1),
        3,
    ).eval()


def test_one_tile_equals_whole_image_inference():
    detector, post = _detector(), PostProcessor()
    images01 = torch.zeros(2, 3, 128, 160)
    images01[:, :, :100, :150] = torch.rand(2, 3, 100, 150)
    sizes = torch.tensor([[100, 150], [100, 150]])
    with torch.no_grad():
        whole = post(detector(images01), sizes)
    sliced = SlicedInference(tile_size=256, overlap=32, tile_batch_size=2)(detector, post, images01, sizes)
    for a, b in zip(whole, sliced):
        assert len(a.scores) > 100, "an untrained detector still emits boxes above 0.05"
        assert torch.equal(a.boxes_xyxy, b.boxes_xyxy) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels)


def test_batched_tiles_equal_single_tiles_with_a_real_detector():
    # float64 weights make batched and single convolutions agree far below float32; the post-processor's
    # float32 math still differs by an ulp between batch sizes, so compare as sets with float32 tolerances.
    detector = _detector().double()
    post = PostProcessor(score_thresh=0.07, max_per_image=10**6)  # no cap: compare the whole sets
    images01 = torch.rand(1, 3, 128, 192, dtype=torch.float64)
    sizes = torch.tensor([[128, 192]])
    one = SlicedInference(64, 16, tile_batch_size=1)(detector, post, images01, sizes)[0]
    many = SlicedInference(64, 16, tile_batch_size=5)(detector, post, images01, sizes)[0]  # 4 x 3 tiles: 5, 5, 2
    assert len(one.scores) == len(many.scores) > 200, "an untrained detector emits boxes above 0.07"
    assert one.boxes_xyxy[:, 2].max() > 150 and one.boxes_xyxy[:, 3].max() > 100, "boxes in image pixels"
    assert torch.allclose(one.scores, many.scores, rtol=0, atol=1e-6)
    key_one = torch.cat([one.boxes_xyxy, one.labels[:, None] * 1000.0, one.scores[:, None] * 1000.0], 1)
    key_many = torch.cat([many.boxes_xyxy, many.labels[:, None] * 1000.0, many.scores[:, None] * 1000.0], 1)
    dist, match = torch.cdist(key_one.double(), key_many.double()).min(1)
    assert dist.max() < 1e-3 and len(set(match.tolist())) == len(one.scores), "the same detections"


def test_invalid_settings_are_clear_errors():
    with pytest.raises(ValueError, match="overlap < tile_size"):
        SlicedInference(tile_size=128, overlap=128)
    with pytest.raises(ValueError, match="tile_batch_size >= 1"):
        SlicedInference(tile_batch_size=0)
    with pytest.raises(ValueError, match=r"min_containment must be in \[0.5, 1\]"):
        SlicedInference(min_containment=0.4)


# ------------------------------------------------------------- tiled training + whole-image eval, real CLI
def test_tiled_recipe_prints_its_config(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", "configs/quickstart.yaml", "--config", "configs/tiled.yaml", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: tod_lightning.models.SlicedInference" in printed
    assert "class_path: tod_lightning.data.TileSpec" in printed and "eval_batch_size: 1" in printed
    # one loader worker: each reads frames of its own, and the 24 scenes would give two only 12 each
    assert "train_frames_per_group: 16" in printed and "num_workers: 1" in printed


def test_tiled_training_logs_whole_image_ap_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen_ids, seen_sizes = [], []
    update = AITODMetric.update

    def spy_update(self, preds, targets):  # what the metric scores: one entry per whole val image
        seen_ids.extend(int(t["image_id"]) for t in targets)
        return update(self, preds, targets)

    call = SlicedInference.__call__

    def spy_call(self, detector, postprocess, images01, image_sizes):
        seen_sizes.extend(tuple(s) for s in image_sizes.tolist())
        return call(self, detector, postprocess, images01, image_sizes)

    monkeypatch.setattr(AITODMetric, "update", spy_update)
    monkeypatch.setattr(SlicedInference, "__call__", spy_call)
    tiles = ["--data.train_tiling.init_args.tile_size=128", "--data.train_tiling.init_args.overlap=32"]
    tiles += ["--model.inference.init_args.tile_size=128", "--model.inference.init_args.overlap=32"]
    cli = fit_tiny(tmp_path, "configs/tiled.yaml", image_size=[200, 300], num_train=3, num_val=2, extra=tuple(tiles))

    train = cli.datamodule.datasets["train"]
    assert len(train) > 3 and all(x2 - x1 <= 128 and y2 - y1 <= 128 for _, (x1, y1, x2, y2) in train.index)
    metrics = cli.trainer.callback_metrics
    assert {"val/AP", "val/AP50", "val/AP_vt", "val/AP_t"} <= set(metrics) and "train/loss" in metrics
    assert "val/loss" not in metrics, "no whole-image loss from tiles"
    assert sorted(seen_ids) == [1, 2], "each of the 2 val scenes scored once, whole"
    assert seen_sizes == [(200, 300), (200, 300)], "sliced inference got the whole scenes (eval batch size 1)"

    # the checkpoint restores the sliced inference with its settings
    reloaded = DetectionTask.load_from_checkpoint(latest_checkpoint(cli), map_location="cpu")
    assert isinstance(reloaded.inference, SlicedInference) and reloaded.inference.tile_size == 128

    # predict on the scene folder: one whole-image result per file, boxes in scene pixels beyond one tile
    images = Path(cli.datamodule.splits["val"].images_dir)
    out_file = tmp_path / "dets.json"
    args = ["--config", str(ROOT / "configs/quickstart.yaml"), "--config", str(ROOT / "configs/tiled.yaml")]
    cli_main(
        ["predict", *args, *tiny_data_args(tmp_path, image_size=[200, 300], num_train=3, num_val=2)]
        + [*quiet_trainer_args(tmp_path), *tiles, f"--ckpt_path={latest_checkpoint(cli)}"]
        + [f"--data.predict={images}", f"--predict_writer.output_file={out_file}"]
    )
    records = json.loads(out_file.read_text())
    assert {r["image_id"] for r in records} == {1, 2}
    right, bottom = (max(r["bbox"][k] + r["bbox"][k + 2] for r in records) for k in (0, 1))
    assert 128 < right <= 300.01 and 128 < bottom <= 200.01


# ----------------------------------------------------------------------------- benchmarks/sliced_vs_whole.py
def _benchmark_module():
    spec = importlib.util.spec_from_file_location("sliced_vs_whole", ROOT / "benchmarks/sliced_vs_whole.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_scores_an_oracle_at_ap_1_whole_and_sliced():
    bench = _benchmark_module()
    height, width = 700, 900
    gt_boxes_xyxy = straddling_scene(3, height, width, 256, 48)
    n = len(gt_boxes_xyxy)
    labels = torch.arange(n) % 3
    wh = (gt_boxes_xyxy[:, 2:] - gt_boxes_xyxy[:, :2]).numpy()
    sample = {
        "image": coordinate_image_uint8(height, width),
        "boxes_xyxy": gt_boxes_xyxy.numpy(),
        "labels": labels.numpy(),
        "ignore_xyxy": np.zeros((0, 4), np.float32),
        "image_id": 7,
        "file_name": "scene.png",
        "orig_size": (height, width),
        "scale": (1.0, 1.0),
        "orig_boxes_xyxy": gt_boxes_xyxy.numpy(),
        "orig_labels": labels.numpy(),
        "orig_areas": wh[:, 0] * wh[:, 1],
        "orig_iscrowd": np.zeros(n, bool),
        "num_dropped": 0,
    }
    loader = [collate_detection([sample], size_divisor=32)]
    # Same score for an object's full and partial boxes: a partial box left by the merge is a false positive
    # ranked with the true ones, so AP 1 needs every object exactly once, whole.
    post = OraclePostProcessor(gt_boxes_xyxy, labels, torch.rand(n) * 0.9 + 0.05)
    task = SimpleNamespace(detector=OracleDetector(), postprocess=post, val_metric=SimpleNamespace(area_ranges=None))
    whole = bench.evaluate(task, loader, None, torch.device("cpu"))
    sliced = bench.evaluate(task, loader, SlicedInference(256, 48), torch.device("cpu"))
    assert post.num_raw > 2 * n, "the tiles saw many objects twice or more"
    for row in (whole, sliced):
        assert row["detections"] == n
        assert row["AP"] == pytest.approx(1.0) and row["AP50"] == pytest.approx(1.0)
        assert row["AP_vt"] == pytest.approx(1.0) and row["AP_t"] == pytest.approx(1.0)
        assert row["seconds"] > 0


def test_benchmark_smoke_mode(tmp_path, capsys):
    bench = _benchmark_module()
    out = tmp_path / "rows.json"
    rows = bench.main(["--smoke", "--cache-dir", str(tmp_path), "--tile-sizes", "128", "256", "--json", str(out)])
    assert [r["inference"] for r in rows] == ["whole image", "sliced 128/48", "sliced 256/48"]
    assert json.loads(out.read_text()) == rows
    for row in rows:
        assert all(-1.0 <= row[k] <= 1.0 for k in ("AP", "AP50", "AP_vt", "AP_t", "AP_s"))
        assert 0 < row["detections"] <= 2 * 1500 and row["seconds"] > 0
    # A 256 px tile holds a whole 192 x 256 smoke image: sliced inference is then whole-image inference.
    assert {k: rows[2][k] for k in ("AP", "AR", "detections")} == {k: rows[0][k] for k in ("AP", "AR", "detections")}
    printed = capsys.readouterr().out
    assert "| whole image |" in printed and "AP - whole AP" in printed and "2 images" in printed
