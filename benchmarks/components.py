"""Assignment, loss and post-processing time against the number of ground-truth boxes per image.

    python benchmarks/components.py              # 3 input sizes, 100/500/2000 boxes, median of 20 runs
    python benchmarks/components.py --smoke      # tiny sizes, seconds

Head of ``configs/quickstart.yaml``: FPN P2-P4 (strides 4, 8, 16), 4 classes; inputs 800x800 batch 2 (an AI-TOD
image), 512x512 batch 2 and 256x256 batch 8 (the quickstart's batch; 2000 boxes of 2-16 px there cover the
image about 2.5 times over, a stress case rather than a scene). Ground truth: tiny boxes (sides 2-16 px) spread
uniformly over the image. Timed separately (median and spread over ``--runs`` runs after ``--warmup`` runs, all
in float32 on CPU unless ``--device``):

- ``assign``: the assignment of a batch exactly as :class:`~tod_lightning.losses.DetectionCriterion` runs it;
- ``loss fwd``: the full criterion forward on random head outputs (assignment included);
- ``loss fwd+bwd``: the same plus ``backward()`` of the total loss;
- ``postprocess``: :class:`~tod_lightning.models.postprocess.PostProcessor` on head outputs where every box
  is planted (exact box, high score) on its nearest stride-4 point and, with lower scores, on the 4 neighbours,
  over a low-score random background: the detections before and after NMS grow with the boxes;
- ``pp candidates``: its score threshold, top-k and decode (``PostProcessor.candidates``), everything but NMS;
- ``pp nms``: the NMS post-processing runs on those candidates (:func:`~tod_lightning.ops.nms.class_aware_nms`
  with the per-image cap of 1500: the compiled grid NMS on CPU, which stops looking at an image once it has kept
  1500 boxes; torchvision's kernel on GPU);
- ``pp nms torchvision``: torchvision's ``batched_nms`` alone on the same candidates, the peer (its CPU kernel
  compares every kept box with every later box of its (image, class) group, so it grows with the square of the
  candidates; the cap is then a cheap truncation of its result, not timed).
- ``train step`` (opt-in: ``--components "train step"``, seconds per run): the whole training step of the
  quickstart model (:func:`~tod_lightning.benchmarking.quickstart_task`: detector forward, its criterion, backward,
  an SGD step) on random images, the same for every box count: the components in a user's terms, what dense
  ground truth adds to a step.

Printed: one row per (geometry, component, boxes) with the median, the spread (min-max), the ratio of the median
to the one at the smallest box count, the spread of that ratio (the quartiles of the run-by-run ratios: run ``i``
of each box count is timed back to back, so a slow moment of the machine shows in both halves of a pair), and the
number of torch operator calls of one run
(:func:`~tod_lightning.benchmarking.count_torch_ops`, backward included). A Python loop over boxes would add at
least one call per box; the counts grow only by the data-dependent rounds (forced assignment rounds, at most one
per candidate of a box), not with the boxes; the compiled kernels' loops (NMS, the gather of candidates) are not
torch operators. The box counts are run interleaved (one run of each count in turn) so that load from other
processes on a shared machine spreads over all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from tod_lightning.benchmarking import count_torch_ops, cpu_model, quickstart_task
from tod_lightning.losses.criterion import DetectionCriterion
from tod_lightning.models.postprocess import PostProcessor
from tod_lightning.ops.nms import class_aware_nms
from tod_lightning.ops.points import level_points
from tod_lightning.structures import DetectorOutput, Target

STRIDES = [4, 8, 16]
NUM_CLASSES = 4
GRAD = {"loss fwd", "loss fwd+bwd", "train step"}  # the components timed with autograd on


def random_targets(batch: int, size: int, num_boxes: int, gen: torch.Generator) -> list[Target]:
    """``num_boxes`` boxes per image, sides uniform in [2, 16] px, positions uniform over the image."""
    targets = []
    for _ in range(batch):
        wh = 2 + 14 * torch.rand(num_boxes, 2, generator=gen)
        xy = torch.rand(num_boxes, 2, generator=gen) * (size - wh)
        boxes_xyxy = torch.cat([xy, xy + wh], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (num_boxes,), generator=gen)
        targets.append(Target(boxes_xyxy=boxes_xyxy, labels=labels))
    return targets


def random_output(batch: int, size: int, gen: torch.Generator, requires_grad: bool) -> DetectorOutput:
    """Random head outputs of the quickstart head (logits ~ N(-4, 1): mostly below the score threshold)."""
    shapes = [(size // s, size // s) for s in STRIDES]
    cls = [(torch.randn(batch, NUM_CLASSES, h, w, generator=gen) - 4.0) for h, w in shapes]
    box = [0.3 * torch.randn(batch, 4, h, w, generator=gen) for h, w in shapes]
    qual = [torch.randn(batch, 1, h, w, generator=gen) for h, w in shapes]
    for t in cls + box + qual:
        t.requires_grad_(requires_grad)
    return DetectorOutput(cls_logits=cls, box_deltas=box, quality_logits=qual, strides=STRIDES, image_size=(size, size))


def planted_output(targets: list[Target], size: int, gen: torch.Generator) -> DetectorOutput:
    """Outputs that decode to every ground-truth box (on its nearest P2 point and, weaker, on 4 neighbours)."""
    out = random_output(len(targets), size, gen, requires_grad=False)
    cls, box, qual = out.cls_logits[0], out.box_deltas[0], out.quality_logits[0]  # level P2, stride 4
    for level in out.cls_logits:
        level.sub_(6.0)  # background scores (about 0.01) far below the 0.05 threshold
    s, h = STRIDES[0], size // STRIDES[0]
    for b, t in enumerate(targets):
        centre = (t.boxes_xyxy[:, :2] + t.boxes_xyxy[:, 2:]) / 2
        wh = t.boxes_xyxy[:, 2:] - t.boxes_xyxy[:, :2]
        ij = (centre / s - 0.5).round().long().clamp(0, h - 1)  # (G, 2) as (x, y) cell
        for (dx, dy), logit in [((0, 0), 4.0), ((1, 0), 1.0), ((-1, 0), 1.0), ((0, 1), 0.5), ((0, -1), 0.5)]:
            x, y = (ij[:, 0] + dx).clamp(0, h - 1), (ij[:, 1] + dy).clamp(0, h - 1)
            point = torch.stack([(x + 0.5) * s, (y + 0.5) * s], dim=1)
            cls[b, :, y, x] = -8.0
            cls[b, t.labels, y, x] = logit
            qual[b, 0, y, x] = logit
            box[b, 0:2, y, x] = ((centre - point) / s).T
            box[b, 2:4, y, x] = torch.log(wh / s).T
    return out


def assign_batch(criterion: DetectionCriterion, output: DetectorOutput, targets: list[Target]) -> torch.Tensor:
    """The assignment of a batch exactly as the criterion runs it."""
    sizes = [tuple(m.shape[-2:]) for m in output.cls_logits]
    points_xy, point_strides = level_points(sizes, output.strides, output.cls_logits[0].device)
    return criterion._assign(points_xy, point_strides, sizes, targets)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few runs (seconds)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--geometries", nargs="+", default=["800x2", "512x2", "256x8"], help="SIZExBATCH")
    parser.add_argument(
        "--components",
        nargs="+",
        default=["assign", "loss fwd", "loss fwd+bwd", "postprocess", "pp candidates", "pp nms", "pp nms torchvision"],
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup, args.boxes, args.geometries = 3, 1, [5, 20], ["64x2"]
    device = torch.device(args.device)
    torch.manual_seed(0)

    criterion, post = DetectionCriterion(), PostProcessor()
    header = [
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads, {args.device}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        f"Median of {args.runs} runs after {args.warmup} warm-up runs; ratio = median / median at "
        f"{args.boxes[0]} boxes per image.",
        "",
        "| input | component | boxes/img | median ms | min-max ms | ratio | ratio p25-p75 | torch ops | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)  # rows follow as they are measured
    rows = []
    for geometry in args.geometries:
        size, batch = map(int, geometry.split("x"))
        gen = torch.Generator().manual_seed(0)
        image_sizes = torch.tensor([[size, size]] * batch, device=device)
        num_classes = NUM_CLASSES

        def nms_of(candidates, nms, *cap):
            boxes_xyxy, scores, labels, image_idx = candidates
            return nms(boxes_xyxy, scores, image_idx * num_classes + labels, post.nms_iou, *cap)

        cases = {}
        for n in args.boxes:
            targets = random_targets(batch, size, n, gen)
            out = random_output(batch, size, gen, requires_grad=True)
            planted = planted_output(targets, size, gen)
            to = lambda ts: [Target(boxes_xyxy=t.boxes_xyxy.to(device), labels=t.labels.to(device)) for t in ts]
            mv = lambda o, g: DetectorOutput(
                *[[t.detach().to(device).requires_grad_(g) for t in ts] for ts in (o.cls_logits, o.box_deltas)],
                [t.detach().to(device).requires_grad_(g) for t in o.quality_logits],
                strides=o.strides,
                image_size=o.image_size,
            )
            planted = mv(planted, False)
            cases[n] = (to(targets), mv(out, True), planted, post.candidates(planted, image_sizes))

        def fwd_bwd(targets, out):
            criterion(out, targets)["loss"].backward()

        if "train step" in args.components:  # built only when asked: instantiating the model takes seconds
            task = quickstart_task(num_classes).to(device).train()
            optimizer = torch.optim.SGD(task.detector.parameters(), lr=0.01, momentum=0.9)
            images01 = torch.rand(batch, 3, size, size, generator=gen).to(device)  # (B, 3, S, S) for every count

        def train_step(targets):
            optimizer.zero_grad(set_to_none=True)
            task.criterion(task.detector(images01), targets, images01)["loss"].backward()
            optimizer.step()

        fns = {
            "assign": lambda c: assign_batch(criterion, c[1], c[0]),
            "loss fwd": lambda c: criterion(c[1], c[0]),
            "loss fwd+bwd": lambda c: fwd_bwd(c[0], c[1]),
            "postprocess": lambda c: post(c[2], image_sizes),
            "pp candidates": lambda c: post.candidates(c[2], image_sizes),
            "pp nms": lambda c: nms_of(c[3], class_aware_nms, c[3][3], post.max_per_image),
            "pp nms torchvision": lambda c: nms_of(c[3], torchvision.ops.batched_nms),
            "train step": lambda c: train_step(c[0]),
        }
        extra = {n: sum(d.scores.numel() for d in post(cases[n][2], image_sizes)) for n in args.boxes}
        for name in args.components:
            fn = fns[name]
            with torch.enable_grad() if name in GRAD else torch.no_grad():
                ops = {n: count_torch_ops(lambda: fn(cases[n])).calls for n in args.boxes}  # untimed
            times = {n: [] for n in args.boxes}
            for i in range(args.warmup + args.runs):
                for n in args.boxes:  # interleaved: one run of each box count in turn
                    sync(device)
                    t0 = time.perf_counter()
                    with torch.enable_grad() if name in GRAD else torch.no_grad():
                        fn(cases[n])
                    sync(device)
                    if i >= args.warmup:
                        times[n].append(time.perf_counter() - t0)
            med = {n: statistics.median(times[n]) for n in args.boxes}
            for n in args.boxes:
                ratio = med[n] / med[args.boxes[0]]
                pairs = [a / b for a, b in zip(times[n], times[args.boxes[0]])]
                paired = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
                note = f"{extra[n] / batch:.0f} dets/img" if name == "postprocess" else ""
                if name.startswith("pp nms"):
                    note = f"{len(cases[n][3][1]) / batch:.0f} candidates/img"
                rows.append(
                    f"| {size}x{size} b{batch} | {name} | {n} | {1e3 * med[n]:.2f} | "
                    f"{1e3 * min(times[n]):.2f}-{1e3 * max(times[n]):.2f} | {ratio:.2f} | "
                    f"{paired[0]:.2f}-{paired[2]:.2f} | {ops[n]} | {note} |"
                )
                print(rows[-1], flush=True)
    return "\n".join(header + rows)


if __name__ == "__main__":
    main()
