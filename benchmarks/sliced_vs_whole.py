"""Whole-image vs sliced inference of a trained checkpoint: AI-TOD AP, time and memory on one split.

    python benchmarks/sliced_vs_whole.py --ckpt outputs/quickstart/.../checkpoints/last.ckpt
    python benchmarks/sliced_vs_whole.py --ckpt last.ckpt --scene-size 768 1024 --num-images 8 --tile-sizes 256 512
    python benchmarks/sliced_vs_whole.py --smoke   # untrained tiny model, 2 generated images, seconds

Each image is evaluated alone (batch of one) with whole-image inference (one detector pass over the image,
as ``DetectionTask`` does with ``inference=None``), then with :class:`~tod_lightning.models.SlicedInference`
at each ``--tile-sizes``. Printed per row: AP, AP50, AP_vt, AP_t, AP_s (the model's own area bins and the
AI-TOD protocol of :class:`~tod_lightning.metrics.AITODMetric`), the detections kept, the seconds spent in
inference (detector and post-processing, or slicing and merging; not data loading, not the metric), the peak
resident memory of the process during the row (Linux ``/proc/self/statm`` sampled every 2 ms; "n/a"
elsewhere) with its rise over the memory held before the row, and the AP difference to the whole-image row.

Data (first match): ``--images-dir`` + ``--ann-file`` (a COCO split); ``--scene-size H W`` (generated
``SyntheticSpec`` scenes of that size, ``--num-images`` of them, object counts per ``--density-side`` px
squared); otherwise the val split of ``configs/quickstart.yaml`` (``SyntheticSpec()``, under ``--cache-dir``).
Images are fed as they are in the files (``EvalTransform()``, no resize), as the quickstart evaluates them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import threading
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tod_lightning.data import CocoSplit, DetectionDataset, EvalTransform, SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.data.collate import collate_detection
from tod_lightning.metrics import AITODMetric
from tod_lightning.models import FPN, DenseHead, SlicedInference, TimmBackbone
from tod_lightning.task import DetectionTask

COLUMNS = ["AP", "AP50", "AP_vt", "AP_t", "AP_s"]


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux), or ``None`` where ``/proc`` is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Samples :func:`rss_bytes` in a background thread while the ``with`` block runs; ``peak`` and ``start``."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.start, self.peak = interval_s, rss_bytes(), rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = rss_bytes()
            if now is not None and self.peak is not None:
                self.peak = max(self.peak, now)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        now = rss_bytes()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)


@torch.no_grad()
def evaluate(task: DetectionTask, loader: DataLoader, inference: SlicedInference | None, device: torch.device) -> dict:
    """AP rows, inference seconds and memory of one inference mode over the loader (one image per batch)."""
    metric = AITODMetric(area_ranges=task.val_metric.area_ranges)
    seconds, num_detections = 0.0, 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRSS() as memory:
        for batch in loader:
            if len(batch) == 0:
                continue
            images01 = batch.images.to(device).float().div_(255.0)  # (1, 3, H, W)
            image_sizes = batch.image_sizes.to(device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            if inference is None:
                detections = task.postprocess(task.detector(images01), image_sizes)
            else:
                detections = inference(task.detector, task.postprocess, images01, image_sizes)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            num_detections += sum(len(d.scores) for d in detections)
            metric.update_detections(detections, batch.targets)
    values = {k: float(v) for k, v in metric.compute().items()}
    mb = 2.0**20
    row = {
        **{k: values.get(k, float("nan")) for k in (*COLUMNS, "AR")},
        "detections": num_detections,
        "seconds": seconds,
        "peak_rss_mb": memory.peak / mb if memory.peak is not None else None,
        "rss_rise_mb": (memory.peak - memory.start) / mb if memory.peak is not None else None,
    }
    if device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / mb
    return row


def smoke_task(num_classes: int) -> DetectionTask:
    """An untrained small detector (ResNet-18, FPN P2-P4 with 32 channels), seeded: for the smoke mode only."""
    torch.manual_seed(0)
    return DetectionTask(
        num_classes=num_classes,
        backbone=TimmBackbone("resnet18", pretrained=False, out_strides=[4, 8, 16]),
        necks=[partial(FPN, out_channels=32, min_level=2, max_level=4)],
        head=partial(DenseHead, num_convs=1),
    )


def build_split(args: argparse.Namespace):
    """The split to evaluate (see the module docstring)."""
    if args.images_dir or args.ann_file:
        if not (args.images_dir and args.ann_file):
            raise SystemExit("--images-dir and --ann-file go together")
        return CocoSplit(images_dir=args.images_dir, ann_file=args.ann_file)
    if args.scene_size:
        height, width = args.scene_size
        spec = SyntheticSpec(
            image_size=(height, width),
            num_train=0,
            num_val=args.num_images,
            seed=args.seed,
            density_side=args.density_side,
            dense_fraction=0.0 if args.smoke else 0.1,
        )
    else:
        spec = SyntheticSpec()  # configs/quickstart.yaml: data.synthetic: {}
    return ensure_synthetic_dataset(args.cache_dir, spec)["val"]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the rows, with the AP difference to the first (whole-image) row."""
    header = [
        "inference",
        *COLUMNS,
        "detections",
        "seconds",
        "peak RSS MB (rise)",
        *(["peak GPU MB"] if "peak_gpu_mb" in rows[0] else []),
    ]
    header.append("AP - whole AP")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        memory = "n/a" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f} ({row['rss_rise_mb']:+.0f})"
        cells = [row["inference"], *(f"{row[k]:.4f}" for k in COLUMNS), str(row["detections"])]
        cells += [f"{row['seconds']:.2f}", memory]
        if "peak_gpu_mb" in row:
            cells.append(f"{row['peak_gpu_mb']:.0f}")
        cells.append("–" if row is rows[0] else f"{row['AP'] - rows[0]['AP']:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="checkpoint of a DetectionTask (required unless --smoke)")
    parser.add_argument("--smoke", action="store_true", help="untrained tiny model on 2 generated 192x256 images")
    parser.add_argument("--tile-sizes", type=int, nargs="+", default=[128], help="px, one sliced row each")
    parser.add_argument("--overlap", type=int, default=48, help="px; >= the longest object side")
    parser.add_argument("--tile-batch-size", type=int, default=8)
    parser.add_argument("--images-dir", help="a COCO split's images (with --ann-file)")
    parser.add_argument("--ann-file", help="a COCO split's json (with --images-dir)")
    parser.add_argument("--scene-size", type=int, nargs=2, metavar=("H", "W"), help="generate scenes of this size")
    parser.add_argument("--num-images", type=int, default=8, help="generated scenes (with --scene-size)")
    parser.add_argument("--density-side", type=int, default=256, help="px; objects per this square (--scene-size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated scenes")
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    parser.add_argument("--cache-dir", default=".cache/tod_lightning", help="where generated data is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scene_size = args.scene_size or [192, 256]
        args.num_images = 2
    elif not args.ckpt:
        parser.error("--ckpt is required (or --smoke)")

    device = torch.device(args.device)
    split = build_split(args)
    annotations = split.load(True)
    if args.limit:
        annotations.images = annotations.images[: args.limit]
    if args.smoke:
        task = smoke_task(annotations.num_classes)
    else:
        task = DetectionTask.load_from_checkpoint(args.ckpt, map_location=device)
    task = task.to(device).eval()
    dataset = DetectionDataset(annotations, split.images_dir, EvalTransform())
    loader = DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        collate_fn=functools.partial(collate_detection, size_divisor=task.detector.size_divisor),
    )
    print(f"{len(dataset)} images from {split.source}; device {device}; checkpoint {args.ckpt or '(untrained, smoke)'}")

    rows = [{"inference": "whole image", **evaluate(task, loader, None, device)}]
    for tile in args.tile_sizes:
        overlap = min(args.overlap, tile - 1)
        sliced = SlicedInference(tile_size=tile, overlap=overlap, tile_batch_size=args.tile_batch_size)
        rows.append({"inference": f"sliced {tile}/{overlap}", **evaluate(task, loader, sliced, device)})
    print(format_table(rows))
    for row in rows[1:]:
        print(f"{row['inference']}: AP - whole AP = {row['AP'] - rows[0]['AP']:+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
