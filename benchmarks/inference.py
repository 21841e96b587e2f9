"""Inference latency and peak memory of the quickstart detector: 800x800, and a 2000x1500 scene whole vs sliced.

    python benchmarks/inference.py                 # CPU (or CUDA when available), ~2-3 minutes on 2 CPU cores
    python benchmarks/inference.py --runs 5 --rounds 2
    python benchmarks/inference.py --smoke         # small sizes, seconds

Model: the quickstart detector (ResNet-18 from scratch, FPN P2-P4 with 64 channels, DenseHead with 2 convs,
4 classes) in eval mode + ``PostProcessor()`` (score 0.05, NMS 0.6, up to 1500 per image), batch 1, under
``torch.no_grad()``. Cases:

* ``800x800``: a generated scene of 800x800 (``SyntheticSpec(density_side=256)`` object density);
* ``whole HxW``: the generated 2000x1500 scene in one pass (zero-padded to a multiple of 32);
* ``sliced HxW``: the same scene through ``SlicedInference(tile_size=512, overlap=64)`` (tiles batched 8 at a
  time, merged).

Latency: median (min-max) of ``--runs`` timed runs after one warm-up run (CUDA: synchronised). Memory: each
case runs in its own fresh process (spawn), so peaks do not leak between cases. CPU: peak RSS of that process
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its rise over the RSS right before the first forward
(model and input already built). CUDA: ``torch.cuda.max_memory_allocated`` after a reset. With ``--rounds``
> 1 the cases are run again in the same order and the medians are over all rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch

from tod_lightning.benchmarking import describe_machine, quickstart_task


def rss_mb() -> float | None:
    """Current resident memory of this process (Linux ``/proc``), MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def scene(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A generated scene as ``(1, 3, H', W')`` float in [0, 1], zero-padded to a multiple of 32."""
    from tod_lightning.data.synthetic import SyntheticSpec, render_scene

    image, _ = render_scene(np.random.default_rng(seed), SyntheticSpec(density_side=256), height=height, width=width)
    images01 = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)  # (1, 3, H, W)
    pad_h, pad_w = -height % 32, -width % 32
    return torch.nn.functional.pad(images01, (0, pad_w, 0, pad_h))  # (1, 3, H', W')


def measure(case: dict) -> dict:
    """Runs in a fresh process: build the model and input, warm up, time ``runs`` inferences."""
    from tod_lightning.models import PostProcessor, SlicedInference

    torch.set_num_threads(case["threads"]) if case["threads"] else None
    device = torch.device(case["device"])
    detector = quickstart_task(4).detector.to(device)  # the model of configs/quickstart.yaml, seed 0
    detector.eval()
    postprocess = PostProcessor()
    height, width = case["size"]
    images01 = scene(height, width).to(device)
    image_sizes = torch.tensor([[height, width]], device=device)
    sliced = SlicedInference(tile_size=case["tile"], overlap=case["overlap"]) if case["mode"] == "sliced" else None

    @torch.no_grad()
    def infer():
        if sliced is None:
            return postprocess(detector(images01), image_sizes)
        return sliced(detector, postprocess, images01, image_sizes)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = rss_mb()
    detections = infer()  # warm-up
    sync()
    times = []
    for _ in range(case["runs"]):
        start = time.perf_counter()
        detections = infer()
        sync()
        times.append(time.perf_counter() - start)
    out = {
        "times": times,
        "peak_rss_mb": peak_rss_mb(),
        "rss_rise_mb": None if before is None else peak_rss_mb() - before,
        "detections": len(detections[0].scores),
    }
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def cases(args) -> list[dict]:
    common = {"device": args.device, "runs": args.runs, "tile": args.tile, "overlap": args.overlap}
    common["threads"] = args.threads
    big = tuple(args.scene)
    return [
        {**common, "name": f"{args.square}x{args.square} whole", "size": (args.square, args.square), "mode": "whole"},
        {**common, "name": f"{big[1]}x{big[0]} whole", "size": big, "mode": "whole"},
        {**common, "name": f"{big[1]}x{big[0]} sliced {args.tile}/{args.overlap}", "size": big, "mode": "sliced"},
    ]


def table(results: dict[str, list[dict]], args) -> str:
    cuda = args.device.startswith("cuda")
    names = list(results)
    whole_big = statistics.median(t for r in results[names[1]] for t in r["times"])
    lines = [
        f"Machine: {describe_machine()}",
        f"Device: {args.device}; batch 1; latency = median (min-max) of {args.runs} runs x {args.rounds} round(s) "
        "after a warm-up; memory per case in a fresh process",
        "",
        "| case | latency s | vs whole scene | peak RSS MiB | RSS rise MiB |"
        + (" peak CUDA MiB |" if cuda else "")
        + " detections |",
        "|---|---|---|---|---|" + ("---|" if cuda else "") + "---|",
    ]
    for name in names:
        rs = results[name]
        times = [t for r in rs for t in r["times"]]
        med = statistics.median(times)
        ratio = f"{med / whole_big:.2f}x" if name != names[0] else "-"
        peak = statistics.median(r["peak_rss_mb"] for r in rs)
        rise = statistics.median(r["rss_rise_mb"] for r in rs) if rs[0]["rss_rise_mb"] is not None else float("nan")
        row = f"| {name} | {med:.3f} ({min(times):.3f}-{max(times):.3f}) | {ratio} | {peak:.0f} | {rise:.0f} |"
        if cuda:
            row += f" {statistics.median(r['peak_cuda_mb'] for r in rs):.0f} |"
        lines.append(row + f" {rs[-1]['detections']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--square", type=int, default=800, help="side of the square case, px")
    parser.add_argument("--scene", type=int, nargs=2, default=[1500, 2000], metavar=("H", "W"))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per case (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="128x128 and a 160x224 scene, tile 96/16, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.square, args.scene, args.tile, args.overlap, args.runs, args.rounds = 128, [160, 224], 96, 16, 1, 1
    results: dict[str, list[dict]] = {}
    ctx = mp.get_context("spawn")  # a fresh process per case: its own peak RSS / CUDA peak
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for _ in range(args.rounds):
            for case in cases(args):
                out = pool.apply(measure, (case,))
                results.setdefault(case["name"], []).append(out)
                print(f"  {case['name']}: {', '.join(f'{t:.3f}' for t in out['times'])} s", flush=True)
    print(table(results, args))
    return results


if __name__ == "__main__":
    main()
