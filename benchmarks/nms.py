"""Class-aware NMS: torchvision's ``batched_nms`` vs ours (``class_aware_nms``) on dense tiny-object candidates.

    python benchmarks/nms.py            # 100 to 40000 candidates, median of 7 runs
    python benchmarks/nms.py --smoke    # small sizes, seconds

Candidates: ``N / 5`` tiny objects (2-16 px) uniform over a square scene, each with 5 jittered duplicates (as a
dense head gives), random scores, ``--groups`` (image, class) groups; IoU threshold 0.6. All return the same kept
set (checked here on every case, and in ``tests/test_nms.py``). Timed: torchvision's ``batched_nms``, the compiled
grid NMS alone (``grid_batched_nms``), and ``class_aware_nms``, which runs the grid on CPU (``uses_grid``): the small
cases show that the grid's fixed cost (ordering, tensor <-> numpy) is no more than torchvision's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torchvision.ops import batched_nms

from tod_lightning.benchmarking import cpu_model
from tod_lightning.ops.nms import class_aware_nms, grid_batched_nms, uses_grid


def candidates(n: int, size: int, groups: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(n // 5, 2, generator=g) * size
    wh = 2 + 14 * torch.rand(n // 5, 2, generator=g)
    jitter = torch.randn(n // 5, 5, 4, generator=g) * 0.7
    boxes_xyxy = (torch.cat([centers - wh / 2, centers + wh / 2], 1)[:, None] + jitter).reshape(-1, 4).clamp(min=0)
    boxes_xyxy[:, 2:] = torch.maximum(boxes_xyxy[:, 2:], boxes_xyxy[:, :2] + 0.5)
    return (
        boxes_xyxy,
        torch.rand(len(boxes_xyxy), generator=g),
        torch.randint(0, groups, (len(boxes_xyxy),), generator=g),
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=[
            "100x100x4",
            "200x150x4",
            "500x200x8",
            "1000x300x8",
            "2500x512x8",
            "9000x800x8",
            "20000x1500x8",
            "20000x1500x2",
            "40000x2000x4",
        ],
        help="CANDIDATESxSCENExGROUPS",
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cases, args.runs = ["5000x400x1", "100x100x4"], 2
    lines = [
        f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}; median of {args.runs} runs after 2 warm-ups, IoU 0.6",
        "",
        "| candidates | scene | groups | torchvision ms | grid ms | ours ms | speed-up | path | kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for case in args.cases:
        n, size, groups = map(int, case.split("x"))
        boxes_xyxy, scores, group = candidates(n, size, groups)
        ref = batched_nms(boxes_xyxy, scores, group, 0.6)
        ours = class_aware_nms(boxes_xyxy, scores, group, 0.6)
        for kept in (ours, grid_batched_nms(boxes_xyxy, scores, group, 0.6)):
            if set(ref.tolist()) != set(kept.tolist()):
                raise AssertionError(f"{case}: the kept sets differ")
        path = "grid" if uses_grid(boxes_xyxy, 0.6) else "torchvision"
        times = {}
        for name, fn in (("torchvision", batched_nms), ("grid", grid_batched_nms), ("ours", class_aware_nms)):
            for _ in range(2):
                fn(boxes_xyxy, scores, group, 0.6)
            runs = []
            for _ in range(args.runs):
                start = time.perf_counter()
                fn(boxes_xyxy, scores, group, 0.6)
                runs.append(time.perf_counter() - start)
            times[name] = statistics.median(runs)
        lines.append(
            f"| {len(boxes_xyxy)} | {size}x{size} | {groups} | {1e3 * times['torchvision']:.3f} | "
            f"{1e3 * times['grid']:.3f} | {1e3 * times['ours']:.3f} | {times['torchvision'] / times['ours']:.2f}x | "
            f"{path} | {len(ours)} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
