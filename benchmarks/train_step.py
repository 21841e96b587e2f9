"""Training step time of our dense detector vs torchvision's FCOS with the same ResNet, at matched settings.

    python benchmarks/train_step.py                       # resnet18, 512x512, batch 2, 30 pairs, both cases
    python benchmarks/train_step.py --case dense --pairs 40 --threads 1
    python benchmarks/train_step.py --smoke               # 128x128, 2 steps, no timing claims

One step = forward + loss + backward + ``SGD.step()`` (lr 0.01, momentum 0.9, weight decay 1e-4), from images
already in memory (no data loading). Matched settings, both sides:

* backbone: the same ResNet (``--arch``), random init, trainable ``BatchNorm2d`` in train mode, every stage
  trainable. That is what our :class:`~tod_lightning.models.TimmBackbone` builds (timm ResNet, plain BN) and what
  torchvision's ``fcos_resnet50_fpn`` builds without pretrained weights (``norm_layer=nn.BatchNorm2d``,
  ``trainable_backbone_layers=5``); torchvision's ``FrozenBatchNorm2d`` is its choice only with pretrained weights.
* neck: P3-P7, 256 channels; ours :class:`~tod_lightning.models.FPN` ``min_level=3, max_level=7`` (P6 from P5's
  output, ReLU before P7), torchvision's FPN with ``LastLevelP6P7(256, 256)`` (the same).
* head: shared towers of 4 conv3x3 + GroupNorm(32) + ReLU for classification and for regression on both sides
  (our :class:`~tod_lightning.models.DenseHead` ``num_convs=4, norm_groups=32``; ``FCOSHead`` defaults). Ours
  predicts an IoU-quality logit where FCOS predicts centerness: one 3x3 conv each.
* loss: ours :class:`~tod_lightning.losses.DetectionCriterion` (ATSS assignment, focal, GIoU, quality BCE);
  FCOS's own (centre sampling, focal, GIoU, centerness BCE).
* input: FCOS's internal resize is disabled by setting ``min_size = max_size =`` the input size (it still runs a
  scale-1 bilinear interpolate and normalises inside its ``GeneralizedRCNNTransform``; that cost is counted on
  its side, as our normalisation is counted on ours).
* threads: ``torch.set_num_threads(--threads)`` once for the whole run (default 1: the host is shared, and one
  thread gives the most repeatable figures).

Timing: after ``--warmup`` steps of each model, ``--pairs`` paired steps alternate which model goes first; the
ratio is taken per pair (ours / FCOS) and reported as median and p10-p90. Our P2 configuration (FPN P2-P7, no
peer) runs inside the same pairs; its ratio to FCOS (P3-P7) is informational. ``--profile`` (automatic when a
ratio median exceeds 1.0, except in smoke mode) profiles one of our steps with ``torch.profiler`` and prints the
top operators and the share of the step spent in the assigner (timed by wrapping the injected assigner, no file
edited).
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from tod_lightning.assigners.atss import ATSSAssigner
from tod_lightning.benchmarking import cpu_model
from tod_lightning.losses import DetectionCriterion
from tod_lightning.models import FPN, DenseHead, Detector, TimmBackbone
from tod_lightning.structures import Target

NUM_CLASSES = 10
# (boxes per image, min side px, max side px) of each case.
CASES = {"normal": (20, 8, 128), "dense": (500, 2, 16)}


def make_batch(batch: int, size: int, num_boxes: int, min_side: float, max_side: float, seed: int):
    """Random images in [0, 1] ``(B, 3, size, size)`` and ``num_boxes`` random boxes per image (xyxy pixels)."""
    g = torch.Generator().manual_seed(seed)
    images01 = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        wh = min_side + (max_side - min_side) * torch.rand(num_boxes, 2, generator=g)  # (N, 2)
        xy = torch.rand(num_boxes, 2, generator=g) * (size - wh)  # top-left inside the image
        boxes_xyxy = torch.cat([xy, xy + wh], dim=1)  # (N, 4)
        labels = torch.randint(0, NUM_CLASSES, (num_boxes,), generator=g)
        targets.append(Target(boxes_xyxy=boxes_xyxy, labels=labels))
    return images01, targets


class TimedAssigner:
    """Wraps an assigner and adds the wall time of its calls to ``seconds`` (injected; no file is changed)."""

    def __init__(self, inner: ATSSAssigner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, *args, **kwargs):
        return self._timed(self.inner, *args, **kwargs)

    def assign_batch(self, *args, **kwargs):
        return self._timed(self.inner.assign_batch, *args, **kwargs)

    def _timed(self, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


@dataclass
class Side:
    name: str
    model: nn.Module
    step: Callable[[], float]  # one training step, returns the loss value
    assigner: TimedAssigner | None = None


def build_ours(arch: str, min_level: int, images01: Tensor, targets: list[Target]) -> Side:
    strides = tuple(2**lvl for lvl in range(min_level, 6))  # backbone levels P{min}..P5
    detector = Detector(
        backbone=TimmBackbone(arch, pretrained=False, out_strides=strides),
        necks=[functools.partial(FPN, out_channels=256, min_level=min_level, max_level=7)],
        head=functools.partial(DenseHead, num_convs=4, norm_groups=32),
        num_classes=NUM_CLASSES,
    ).train()
    assigner = TimedAssigner(ATSSAssigner())
    criterion = DetectionCriterion(assigner=assigner)
    opt = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        losses = criterion(detector(images01), targets, images01)
        losses["loss"].backward()
        opt.step()
        return float(losses["loss"].detach())

    return Side(f"ours P{min_level}-P7", detector, step, assigner)


def build_fcos(arch: str, size: int, images01: Tensor, targets: list[Target]) -> Side:
    resnet = getattr(torchvision.models, arch)(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    # min_size = max_size = input size: the internal resize keeps the geometry (scale factor 1).
    model = FCOS(backbone, NUM_CLASSES, min_size=size, max_size=size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = list(images01)
    tv_targets = [{"boxes": t.boxes_xyxy, "labels": t.labels} for t in targets]

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        losses = model(images, tv_targets)
        loss = sum(losses.values())
        loss.backward()
        opt.step()
        return float(loss.detach())

    return Side("torchvision FCOS P3-P7", model, step)


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    t0 = time.perf_counter()
    loss = fn()
    return time.perf_counter() - t0, loss


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_case(case: str, args) -> dict:
    num_boxes, min_side, max_side = CASES[case]
    images01, targets = make_batch(args.batch, args.size, num_boxes, min_side, max_side, seed=args.seed)
    torch.manual_seed(args.seed)
    sides = [build_ours(args.arch, 3, images01, targets), build_fcos(args.arch, args.size, images01, targets)]
    if not args.no_p2:
        sides.append(build_ours(args.arch, 2, images01, targets))
    for side in sides:
        for _ in range(args.warmup):
            side.step()
        if side.assigner is not None:
            side.assigner.seconds = 0.0
    times: dict[str, list[float]] = {s.name: [] for s in sides}
    losses: dict[str, float] = {}
    for i in range(args.pairs):
        # Rotate the order so that each model goes first equally often (drift and neighbours hit all alike).
        order = sides[i % len(sides) :] + sides[: i % len(sides)]
        for side in order:
            dt, loss = timed(side.step)
            times[side.name].append(dt)
            losses[side.name] = loss
    ours, fcos = sides[0].name, sides[1].name
    result = {"case": case, "boxes": num_boxes, "rows": []}
    for side in sides:
        ratios = [a / b for a, b in zip(times[side.name], times[fcos])]
        assign_share = (
            side.assigner.seconds / sum(times[side.name]) if side.assigner is not None and times[side.name] else None
        )
        result["rows"].append(
            {
                "name": side.name,
                "ms": 1000 * statistics.median(times[side.name]),
                "ratio": statistics.median(ratios) if side.name != fcos else None,
                "p10": quantile(ratios, 0.1),
                "p90": quantile(ratios, 0.9),
                "assign_share": assign_share,
                "loss": losses[side.name],
                "peer": side.name == ours,
            }
        )
    result["sides"] = sides
    return result


def profile_step(side: Side, top: int = 15) -> str:
    """Profile one step of ``side``; top operators by self CPU time with their share of the step."""
    from torch.profiler import ProfilerActivity, profile

    side.assigner.seconds = 0.0
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        side.step()
    total = time.perf_counter() - t0
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in events) or 1.0
    lines = [
        f"Profile of one step of {side.name} (under the profiler: {1000 * total:.0f} ms; "
        f"assigner {100 * side.assigner.seconds / total:.1f}% of it)",
        "",
        "| operator | calls | self CPU ms | share of self CPU |",
        "|---|---:|---:|---:|",
    ]
    for e in events[:top]:
        share = 100 * e.self_cpu_time_total / total_self
        lines.append(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1000:.1f} | {share:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--size", type=int, default=512, help="square input side, a multiple of 128 (P7)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--case", choices=["normal", "dense", "both"], default="both")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-p2", action="store_true", help="skip our P2-P7 configuration")
    parser.add_argument("--profile", action="store_true", help="profile one of our steps even when not slower")
    parser.add_argument("--smoke", action="store_true", help="128x128, 2 steps, no timing claims")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.pairs, args.warmup = 128, 2, 0
    torch.set_num_threads(args.threads)

    cases = ["normal", "dense"] if args.case == "both" else [args.case]
    results = [run_case(c, args) for c in cases]

    print(f"## Training step: ours vs torchvision FCOS ({args.arch})\n")
    print(
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch thread(s) of {__import__('os').cpu_count()} "
        f"cores; torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}"
    )
    print(
        f"Input {args.batch}x3x{args.size}x{args.size}, {NUM_CLASSES} classes, SGD; {args.pairs} alternating "
        f"paired steps after {args.warmup} warm-up steps per model"
        + (" (SMOKE: no timing claims)" if args.smoke else "")
        + "\n"
    )
    print("| case | model | ours ms | FCOS ms | ratio median | ratio p10-p90 | assigner share | loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    slower = []
    for r in results:
        fcos_row = next(row for row in r["rows"] if row["ratio"] is None)
        label = f"{r['case']} ({r['boxes']} boxes/img)"
        for row in r["rows"]:
            if row["ratio"] is None:
                continue
            note = "" if row["peer"] else " (no peer; vs FCOS for scale)"
            share = f"{100 * row['assign_share']:.0f}%" if row["assign_share"] is not None else "-"
            print(
                f"| {label} | {row['name']}{note} | {row['ms']:.0f} | {fcos_row['ms']:.0f} | {row['ratio']:.2f}x "
                f"| {row['p10']:.2f}-{row['p90']:.2f} | {share} | {row['loss']:.3f} |"
            )
            if row["peer"] and row["ratio"] > 1.0:
                slower.append((r, row))
    fcos_losses = ", ".join(f"{r['case']} {r['rows'][1]['loss']:.3f}" for r in results)
    print(f"\nFCOS loss after the last step: {fcos_losses}")
    for r in results:
        if args.profile or (not args.smoke and any(s[0] is r for s in slower)):
            print()
            print(f"### {r['case']}: " + profile_step(r["sides"][0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
