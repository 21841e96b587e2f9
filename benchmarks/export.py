"""ONNX export: export and verification time, file size, and raw-output latency of PyTorch vs onnxruntime.

    python benchmarks/export.py                  # quickstart and aitod_r50, under 2 minutes on 2 CPU cores
    python benchmarks/export.py --smoke          # the quickstart at 64x64, seconds

Models: the detectors of ``configs/quickstart.yaml`` (ResNet-18, FPN P2-P4 64 ch, 2 head convs) and
``configs/aitod_r50.yaml`` (ResNet-50, FPN P2-P6 256 ch, 4 head convs), 4 classes, random weights (``pretrained``
turned off: latency does not depend on the values). Each is exported as ``python -m tod_lightning.export`` does
(:func:`~tod_lightning.export.export_onnx`, dynamic height and width, opset 18) at the largest input size, then
verified against PyTorch as the export does by default (:func:`~tod_lightning.export.verify_export`, timed apart).

Latency: the raw dense outputs of a batch of 1 (post-processing is the same code on both sides and is left out),
median of ``--runs`` runs after 2 warm-up runs, per input size PyTorch first, then onnxruntime: PyTorch in eval mode
under ``torch.no_grad()`` (``RawOutputs``, the module that is exported) and onnxruntime through
:class:`~tod_lightning.models.onnx_detector.OnnxDetector` (CPU provider), both with the same number of threads.
Sizes are rounded up to the model's size divisor (800 -> 832 for divisor 64).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tod_lightning.benchmarking import describe_machine, quickstart_task
from tod_lightning.export import export_metadata, export_onnx, flat_outputs, verify_export
from tod_lightning.models.onnx_detector import OnnxDetector, RawOutputs

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"quickstart": ROOT / "configs/quickstart.yaml", "aitod_r50": ROOT / "configs/aitod_r50.yaml"}


def median_ms(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the quickstart at 64x64, one run (seconds)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 800], help="square input sides, px")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    warmup = 2
    if args.smoke:
        args.models, args.sizes, args.runs, warmup = ["quickstart"], [64], 1, 0
    torch.set_num_threads(args.threads)
    header = [
        f"Machine: {describe_machine()}; {args.threads} threads for PyTorch and onnxruntime (CPU provider).",
        f"Raw outputs of a batch of 1, median of {args.runs} runs after {warmup} warm-up runs.",
        "",
        "| model | params (M) | export, dynamic (s) | verify (s) | file (MB) | input | PyTorch ms | onnxruntime ms "
        "| PyTorch / onnxruntime |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            detector = quickstart_task(4, config=MODELS[name]).detector.eval()
            params = sum(p.numel() for p in detector.parameters()) / 1e6
            divisor = export_metadata(detector, dynamic=True, input_size=(64, 64))["size_divisor"]
            sides = [math.ceil(s / divisor) * divisor for s in args.sizes]
            path = os.path.join(tmp, f"{name}.onnx")
            t0 = time.perf_counter()
            metadata = export_onnx(detector, path, height=max(sides), width=max(sides), dynamic=True, verify=False)
            export_s = time.perf_counter() - t0
            onnx_detector = OnnxDetector(path, providers=["CPUExecutionProvider"], intra_op_num_threads=args.threads)
            t0 = time.perf_counter()
            verify_export(detector, lambda x: flat_outputs(onnx_detector(x)), metadata, "ONNX")
            verify_s = time.perf_counter() - t0
            size_mb = os.path.getsize(path) / 1e6
            raw = RawOutputs(detector)
            for i, side in enumerate(sides):
                images01 = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
                with torch.no_grad():
                    torch_ms = median_ms(lambda: raw(images01), args.runs, warmup)
                onnx_ms = median_ms(lambda: onnx_detector(images01), args.runs, warmup)
                first = (
                    f"{name} | {params:.2f} | {export_s:.1f} | {verify_s:.2f} | {size_mb:.1f}"
                    if i == 0
                    else " |  |  |  | "
                )
                rows.append(f"| {first} | {side}x{side} | {torch_ms:.1f} | {onnx_ms:.1f} | {torch_ms / onnx_ms:.2f}x |")
                print(rows[-1], flush=True)
    return "\n".join(header + rows)


if __name__ == "__main__":
    main()
