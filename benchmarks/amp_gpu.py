"""Mixed precision on a CUDA GPU: the quickstart detector trained N steps at 32-true, bf16-mixed and 16-mixed.

    python benchmarks/amp_gpu.py                                  # 200 steps each, batch 8, 256-px synthetic images
    python benchmarks/amp_gpu.py --steps 100 --batch-size 16 --image-size 512
    python benchmarks/amp_gpu.py --device cpu --steps 4 --warmup 1 # checks the script itself (no 16-mixed on CPU)
    python benchmarks/amp_gpu.py --smoke                          # seconds, CPU: 32-true and bf16-mixed, 3 steps

Per precision: a fresh model from the same seed, built by the real CLI from ``configs/quickstart.yaml`` plus
``configs/amp_bf16.yaml`` / ``configs/amp_fp16.yaml``, trained ``--steps`` optimizer steps on the synthetic
train split (no validation, no logger, no checkpoints). Printed per row:

* images/s: training images over the wall time of the steps after ``--warmup`` (CUDA-synchronised at both
  ends; data loading included, so raise ``--num-workers`` if the GPU starves);
* peak MiB: ``torch.cuda.max_memory_allocated`` over the run (reset before it);
* the final ``train/loss`` and its terms, and ``finite``: whether every step's loss was finite;
* with 16-mixed, the GradScaler's final scale and the steps it skipped (overflowing gradients).

Without CUDA (and without ``--device cpu``) it prints that it needs a GPU and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"32-true": [], "bf16-mixed": ["configs/amp_bf16.yaml"], "16-mixed": ["configs/amp_fp16.yaml"]}
TERMS = ["loss", "loss_cls", "loss_box", "loss_quality"]


class StepMeter(L.Callback):
    """Times the steps after ``warmup`` (synchronising the device), keeps every step's loss and the AMP scale."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.losses: list[torch.Tensor] = []
        self.start = self.end = None
        self.images = 0
        self.scales: list[float] = []

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self._sync(pl_module)
            self.start = time.perf_counter()
        if self.start is not None:
            self.images += len(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())  # no .item(): it would synchronise every step
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.scales.append(float(scaler.get_scale()))

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.end = time.perf_counter()


def run(precision: str, args: argparse.Namespace) -> dict:
    from tod_lightning.cli import main as cli_main

    configs = ["configs/quickstart.yaml", *RECIPES[precision]]
    cli = cli_main(
        [
            *(a for c in configs for a in ("--config", str(ROOT / c))),
            f"--trainer.accelerator={args.device}",
            "--trainer.devices=1",
            f"--trainer.max_steps={args.steps}",
            "--trainer.max_epochs=-1",
            "--trainer.limit_val_batches=0",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--data.cache_dir={args.cache_dir}",
            f"--data.synthetic.image_size={args.image_size}",
            f"--data.batch_size={args.batch_size}",
            f"--data.num_workers={args.num_workers}",
            *(
                [f"--data.synthetic.num_train={args.batch_size * args.steps}", "--data.synthetic.num_val=2"]
                if args.smoke
                else []
            ),
        ],
        run=False,
    )
    assert cli.trainer.precision == precision, (cli.trainer.precision, precision)
    meter = StepMeter(args.warmup)
    cli.trainer.callbacks.append(meter)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = meter.end - meter.start if meter.start is not None else float("nan")
    metrics = cli.trainer.callback_metrics
    losses = torch.stack(meter.losses).float().cpu()
    row = {
        "precision": precision,
        "images/s": meter.images / seconds if seconds > 0 else float("nan"),
        "peak MiB": torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else float("nan"),
        **{t: float(metrics[f"train/{t}"]) for t in TERMS if f"train/{t}" in metrics},
        "finite": bool(torch.isfinite(losses).all()),
    }
    if meter.scales:
        row["scale"] = meter.scales[-1]
        row["skipped"] = sum(b < a for a, b in zip(meter.scales, meter.scales[1:]))  # the scale halves on a skip
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per precision")
    parser.add_argument("--warmup", type=int, default=20, help="untimed first steps (autotune, allocator)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated synthetic images, px")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--cache-dir", default=".cache/tod_lightning")
    parser.add_argument("--precisions", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script, no 16-mixed")
    parser.add_argument("--smoke", action="store_true", help="CPU, 3 steps of batch 2 at 64 px on a tiny dataset")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.steps, args.warmup, args.batch_size, args.image_size, args.num_workers = "cpu", 3, 1, 2, 64, 0
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/amp_gpu.py needs a CUDA GPU (none is visible); nothing measured.")
        return 0
    precisions = [p for p in args.precisions if not (args.device == "cpu" and p == "16-mixed")]
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{where}: {args.steps} steps ({args.warmup} warm-up) x batch {args.batch_size} x {args.image_size} px")

    rows = [run(p, args) for p in precisions]
    columns = ["precision", "images/s", "peak MiB", *TERMS, "finite", "scale", "skipped"]
    columns = [c for c in columns if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) and not math.isnan(v) else ("n/a" if v != v else str(v))
    table = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
