"""Training data loader throughput vs the quickstart model's training step: does loading keep up?

    python benchmarks/data_pipeline.py               # quickstart 256x256, generated 1024x1024, 512 px tiles of
                                                     # generated 1500x2000 frames; workers 0/1/2
    python benchmarks/data_pipeline.py --batches 10 --steps 3
    python benchmarks/data_pipeline.py --smoke       # a handful of 64x64 images, seconds

Loader: ``DetectionDataModule(...).train_dataloader()`` exactly as training builds it: PNG decode,
``TrainAugmentation()`` (the defaults configs/quickstart.yaml uses: flips, scale jitter 0.75-1.25,
photometric block), ``collate_detection`` (padding to 32). Images/s are counted over ``--batches`` batches
after the first (worker start-up and the first batch are excluded) for ``num_workers`` 0, 1, 2; "per
worker" divides by max(1, workers). The tiled case trains on ``TileSpec(tile_size=512, overlap=64)`` tiles of
generated 1500 x 2000 frames (the size of a VisDrone frame): each tile decodes its whole frame (``TileSpec``'s
cost note), so its samples/s show what that costs; the same tiles again with ``train_frames_per_group=16`` (the
tiles of 16 frames drawn together, each worker keeping 16 decoded frames: ``tod_lightning.data.frame_groups``)
show what reusing the decodes saves. With frame groups the loader is timed over at least one whole group of
tiles per worker after the first batch (more than ``--batches`` if a group holds more), so the figure includes
every decode of a group: the steady state, where each worker decodes each frame of its own group once. "decodes
per frame" is the frame decodes of one epoch per frame, counted from the loader's order
(``tod_lightning.data.frame_groups.count_decodes``), not timed: 1 is the least.

Model: the quickstart detector (ResNet-18 from scratch, FPN P2-P4 with 64 channels, DenseHead with 2 convs)
with ``DetectionCriterion()`` and AdamW: forward + loss + backward + optimizer step on ONE collated batch
of the same data, ``--steps`` timed steps after a warm-up step; seconds per image = median step / batch.

"keeps up" = loader images/s >= model images/s. The two are measured one after the other, not together:
in real training the workers share the CPU cores with the model, so on a 2-core machine the joint rate is
lower than either figure.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch

from tod_lightning.benchmarking import describe_machine, quickstart_task
from tod_lightning.data import DetectionDataModule, SyntheticSpec, TileSpec
from tod_lightning.data.frame_groups import count_decodes


def loader_rate(datamodule: DetectionDataModule, batches: int) -> tuple[float, float, object]:
    """(images/s over ``batches`` batches after the first, seconds to the first batch, the first batch)."""
    start = time.perf_counter()
    iterator = iter(datamodule.train_dataloader())
    first = next(iterator)
    startup = time.perf_counter() - start
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            images += len(next(iterator))
        except StopIteration:
            break
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return images / seconds if seconds > 0 else float("nan"), startup, first


def model_rate(batch, num_classes: int, steps: int) -> tuple[float, list[float]]:
    """(images/s, per-step seconds) of forward + criterion + backward + AdamW step on one batch."""
    task = quickstart_task(num_classes)  # the model of configs/quickstart.yaml
    detector, criterion = task.detector, task.criterion
    detector.train()
    optimizer = torch.optim.AdamW(detector.parameters(), lr=2e-3, weight_decay=0.05)
    images01 = batch.images01()

    def step() -> None:
        output = detector(images01)
        losses = criterion(output, batch.targets, images01)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    step()  # warm-up (allocator, cudnn/oneDNN kernels)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times), times


def run_dataset(
    name: str, spec: SyntheticSpec, tiling: TileSpec | None, frames_per_group: int, cache_dir: str, args
) -> list[dict]:
    rows, first_batch, num_classes = [], None, spec.num_classes
    for workers in args.workers:
        datamodule = DetectionDataModule(
            synthetic=spec,
            cache_dir=cache_dir,
            batch_size=args.batch_size,
            num_workers=workers,
            train_tiling=tiling,
            train_frames_per_group=frames_per_group,
        )
        datamodule.setup("fit")
        dataset, batches = datamodule.datasets["train"], args.batches
        frame_of = [frame for frame, _ in dataset.index] if tiling is not None else list(range(len(dataset)))
        decodes = len(dataset)  # each sample decodes its frame
        if frames_per_group:  # time a whole group per worker: its decodes come first, its cached reads after
            tiles_per_group = frames_per_group * len(frame_of) / len(set(frame_of))
            batches = max(batches, max(workers, 1) * math.ceil(tiles_per_group / args.batch_size))
            order = datamodule.train_dataloader().sampler.epoch_order()
            decodes = count_decodes(order, frame_of, frames_per_group, args.batch_size, workers)
        rate, startup, first = loader_rate(datamodule, batches)
        first_batch = first_batch or first
        rows.append(
            {"data": name, "workers": workers, "loader": rate, "startup": startup, "batches": batches}
            | {"decodes": decodes / len(set(frame_of))}
        )
        print(f"  {name} workers={workers}: {rate:.1f} img/s (start-up {startup:.2f} s)", flush=True)
    model, times = model_rate(first_batch, num_classes, args.steps)
    print(f"  {name} model: {model:.2f} img/s (steps {', '.join(f'{t:.2f}' for t in times)} s)", flush=True)
    for row in rows:
        row.update(model=model, model_times=times, batch=len(first_batch))
    return rows


def table(rows: list[dict], args) -> str:
    lines = [
        f"Machine: {describe_machine()}",
        f"Loader: batch {args.batch_size}, {args.batches} batches timed after the first (with frame groups: at least a "
        f"whole group per worker, the 'timed' column); model: quickstart detector "
        f"training step (fwd + DetectionCriterion + bwd + AdamW), median of {args.steps} steps on the same batch",
        "",
        "| data | workers | decodes per frame | timed batches | loader img/s | img/s per worker | first batch s "
        "| model step s/img | model img/s | loader / model | keeps up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["loader"] / r["model"]
        lines.append(
            f"| {r['data']} | {r['workers']} | {r['decodes']:.2f} | {r['batches']} | {r['loader']:.1f} | "
            f"{r['loader'] / max(1, r['workers']):.1f} | "
            f"{r['startup']:.2f} | {1 / r['model']:.3f} | {r['model']:.2f} | {ratio:.1f}x | "
            f"{'yes' if ratio >= 1 else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8, help="configs/quickstart.yaml's")
    parser.add_argument("--batches", type=int, default=12, help="timed loader batches per setting")
    parser.add_argument("--steps", type=int, default=3, help="timed model steps")
    parser.add_argument("--large-size", type=int, default=1024, help="side of the generated large scenes, px")
    parser.add_argument("--large-images", type=int, default=40, help="train images of the large scenes")
    parser.add_argument("--cache-dir", default=".cache/tod_lightning")
    parser.add_argument("--smoke", action="store_true", help="a handful of 64x64 images, seconds")
    args = parser.parse_args(argv)
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory()
        args.cache_dir, args.batch_size, args.batches, args.steps, args.workers = tmp.name, 2, 2, 1, [0, 1]
        datasets = [
            ("synthetic 64x64", SyntheticSpec(image_size=64, num_train=8, num_val=0, max_objects=5), None, 0),
            (
                "tiles 64/16 of 96x128",
                SyntheticSpec(image_size=(96, 128), num_train=2, num_val=0, max_objects=5),
                TileSpec(tile_size=64, overlap=16, empty_tile_ratio=1.0),
                0,
            ),
            (
                "tiles 64/16 of 96x128, 2 frames per group",
                SyntheticSpec(image_size=(96, 128), num_train=2, num_val=0, max_objects=5),
                TileSpec(tile_size=64, overlap=16, empty_tile_ratio=1.0),
                2,
            ),
        ]
    else:
        datasets = [
            ("quickstart 256x256", SyntheticSpec(), None, 0),
            (
                f"generated {args.large_size}x{args.large_size}",
                SyntheticSpec(image_size=args.large_size, num_train=args.large_images, num_val=0, density_side=256),
                None,
                0,
            ),
        ]
        frames = SyntheticSpec(image_size=(1500, 2000), num_train=32, num_val=0, density_side=256)
        for frames_per_group in (0, 16):
            name = "tiles 512/64 of generated 1500x2000"
            if frames_per_group:
                name += f", {frames_per_group} frames per group"
            datasets.append((name, frames, TileSpec(tile_size=512, overlap=64), frames_per_group))
    rows = []
    try:
        for name, spec, tiling, frames_per_group in datasets:
            rows += run_dataset(name, spec, tiling, frames_per_group, args.cache_dir, args)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
