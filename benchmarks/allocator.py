"""The quickstart model's training step with glibc's default malloc settings and with tod_lightning's.

    python benchmarks/allocator.py            # 256x256 b8, 512x512 b2, 800x800 b2; 4 process pairs each
    python benchmarks/allocator.py --smoke    # 64x64 b2, one pair, seconds

``tod_lightning/allocator.py`` (applied by ``python cli.py ...``) raises glibc's mmap and trim thresholds, so that
the megabyte blocks a CPU step frees are reused instead of returned to the OS and page-faulted in again. The
settings are process-wide, so every measurement is a fresh process: ``default`` and ``tuned`` alternate, pair by
pair, so a slow phase of the machine shows in both. A process builds the quickstart model
(:func:`~tod_lightning.benchmarking.quickstart_task`: ResNet-18, FPN P2-P4, its criterion; SGD), runs ``--warmup``
steps and times ``--steps`` steps (forward, criterion, backward, SGD step) on random images with 100 tiny boxes per
image. Printed per geometry and setting: the median step over all its processes, the spread of the per-process
medians, the tuned/default ratio (median of the pairs' ratios, min-max), the minor page faults per timed step and
the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = ("default", "tuned")


def child(setting: str, geometry: str, warmup: int, steps: int) -> dict:
    """One process: apply ``setting``, then time the training step. Returns the measurements."""
    if setting == "tuned":
        from tod_lightning.allocator import tune_cpu_allocator

        if not tune_cpu_allocator():
            raise SystemExit("tune_cpu_allocator() changed nothing here (not glibc, LD_PRELOAD, or opted out)")
    import torch
    from components import NUM_CLASSES, random_targets  # the script's folder, benchmarks/, is on sys.path

    from tod_lightning.benchmarking import quickstart_task

    size, batch = map(int, geometry.split("x"))
    gen = torch.Generator().manual_seed(0)
    task = quickstart_task(NUM_CLASSES).train()
    optimizer = torch.optim.SGD(task.detector.parameters(), lr=0.01, momentum=0.9)
    images01 = torch.rand(batch, 3, size, size, generator=gen)  # (B, 3, S, S)
    targets = random_targets(batch, size, 100, gen)  # 100 boxes of 2-16 px per image

    times = []
    for i in range(warmup + steps):
        if i == warmup:
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        task.criterion(task.detector(images01), targets, images01)["loss"].backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "median_s": statistics.median(times[warmup:]),
        "faults_per_step": (usage.ru_minflt - faults0) / steps,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def run_child(setting: str, geometry: str, warmup: int, steps: int) -> dict:
    from tod_lightning.allocator import ENV_VAR

    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}  # a user's opt-out must not choose the setting
    cmd = [sys.executable, __file__, "--child", setting, "--geometries", geometry]
    cmd += ["--warmup", str(warmup), "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="64x64 b2, one pair of processes, 1 step (seconds)")
    parser.add_argument("--geometries", nargs="+", default=["256x8", "512x2", "800x2"], help="SIZExBATCH")
    parser.add_argument("--pairs", type=int, default=4, help="processes per setting and geometry")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.geometries[0], args.warmup, args.steps)))
        return ""
    if args.smoke:
        args.geometries, args.pairs, args.warmup, args.steps = ["64x2"], 1, 1, 1

    from tod_lightning.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD
    from tod_lightning.benchmarking import describe_machine

    header = [
        describe_machine(),
        f"tuned: glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB "
        f"(tod_lightning/allocator.py); {args.pairs} process pairs, {args.warmup} warm-up + {args.steps} timed steps "
        "each; quickstart model, 100 boxes per image.",
        "",
        "| input | malloc | step ms (median) | per-process medians ms | tuned / default (min-max) | page faults / step "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    for geometry in args.geometries:
        runs = {s: [] for s in SETTINGS}
        for _ in range(args.pairs):
            for setting in SETTINGS:  # alternating: default, tuned, default, tuned, ...
                runs[setting].append(run_child(setting, geometry, args.warmup, args.steps))
        ratios = [t["median_s"] / d["median_s"] for d, t in zip(runs["default"], runs["tuned"])]
        for setting in SETTINGS:
            ms = [1e3 * r["median_s"] for r in runs[setting]]
            ratio = (
                f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})" if setting == "tuned" else "1"
            )
            size, batch = geometry.split("x")
            rows.append(
                f"| {size}x{size} b{batch} | {setting} | {statistics.median(ms):.1f} | "
                f"{' / '.join(f'{m:.0f}' for m in ms)} | {ratio} | "
                f"{statistics.median(r['faults_per_step'] for r in runs[setting]):.0f} | "
                f"{statistics.median(r['peak_rss_mb'] for r in runs[setting]):.0f} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(header + rows)


if __name__ == "__main__":
    main()
