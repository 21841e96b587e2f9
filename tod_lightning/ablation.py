"""Ablation runner: the baseline and each method recipe, same data and schedule, several seeds.

    python -m tod_lightning.ablation --out docs/ablation

Every run goes through the real CLI (``python cli.py fit --config BASE [--config RECIPE] --config RUN``) in its
own process (logs in ``--runs-dir``). Each finished run appends one row to ``<out>/runs.csv``, so an interrupted
ablation resumes where it stopped; the table (mean ± std over seeds) is rebuilt from the CSV into
``<out>/table.md`` and printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

METRICS = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR"]
FIELDS = ["recipe", "seed", *METRICS, "epochs", "seconds", "command"]
COST_FIELDS = ["recipe", "params_M", "gflops", "step_ms"]
BASELINE = "baseline"


def recipe_name(recipe: str) -> str:
    return BASELINE if recipe == BASELINE else Path(recipe).stem


def run_overrides(run_dir: Path, name: str, seed: int, epochs: int) -> dict:
    """Per-run settings layered last: seed, fixed schedule, no checkpoints, timing and summary callbacks."""
    return {
        "seed_everything": seed,
        "trainer": {
            "max_epochs": epochs,
            "check_val_every_n_epoch": epochs,  # one validation, at the end of the fixed schedule
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "default_root_dir": str(run_dir),
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {
                    "project": "tod_lightning",
                    "group": "ablation",
                    "name": f"{name}-s{seed}",
                    "save_dir": str(run_dir),
                },
            },
            "callbacks": [
                {"class_path": "tod_lightning.callbacks.StepTimer"},
                {
                    "class_path": "tod_lightning.callbacks.MetricsSummary",
                    "init_args": {"output_file": str(run_dir / "summary.json")},
                },
            ],
        },
    }


def measure_cost(configs: list[str], extra: list[str], size: int, steps: int = 20) -> dict:
    """Parameters (M), GFLOPs of one forward pass at ``1x3xSIZExSIZE`` (FlopCounterMode counts 2 x MACs), and
    the median time of a full training step (forward, criterion, backward, AdamW step) on the recipe's first
    training batch, after 3 warm-up steps. Measured for every recipe in the same process, one after the other,
    so the relative step times compare like with like (training runs may overlap other work)."""
    from tod_lightning.cli import main as cli_main

    args = [a for c in configs for a in ("--config", c)] + extra
    args += ["--trainer.logger=false", "--trainer.callbacks=[]", "--data.num_workers=0"]
    cli = cli_main(args, run=False)
    model = cli.model
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        images01 = batch.images01()
        losses = model.criterion(model.detector(images01), batch.targets, images01)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    return {
        "params_M": round(params, 4),
        "gflops": round(counter.get_total_flops() / 1e9, 2),
        "step_ms": round(statistics.median(times), 1),
    }


def read_rows(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        return []
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def append_row(csv_path: Path, row: dict, fields: list[str] = FIELDS) -> None:
    new = not csv_path.is_file()
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def build_table(rows: list[dict], costs: dict[str, dict], flops_size: int) -> str:
    """Markdown table: mean ± std over seeds per recipe, cost, and step time relative to the baseline."""
    by_recipe: dict[str, list[dict]] = {}
    for row in rows:
        by_recipe.setdefault(row["recipe"], []).append(row)
    base_step = float(costs[BASELINE]["step_ms"]) if BASELINE in costs else None
    base_ap = statistics.mean(float(r["AP"]) for r in by_recipe[BASELINE]) if BASELINE in by_recipe else None
    head = [
        "recipe",
        "seeds",
        "AP",
        "AP50",
        "AP_vt",
        "AP_t",
        "AP_s",
        "params (M)",
        f"GFLOPs @{flops_size}²",
        "step time vs baseline",
        "AP vs baseline",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for recipe, group in by_recipe.items():
        ap = [float(r["AP"]) for r in group]
        cost = costs.get(recipe, {"params_M": "nan", "gflops": "nan", "step_ms": "nan"})
        step = float(cost["step_ms"])
        verdict = "–"
        if base_ap is not None and recipe != BASELINE:
            delta = statistics.mean(ap) - base_ap
            verdict = f"{delta:+.3f}" + ("" if delta > 0 else " (not better)")
        cells = [
            recipe,
            str(len(group)),
            *(_mean_std([float(r[m]) for r in group]) for m in ("AP", "AP50", "AP_vt", "AP_t", "AP_s")),
            f"{float(cost['params_M']):.2f}",
            f"{float(cost['gflops']):.1f}",
            f"{step / base_step:.2f}×" if base_step else f"{step:.0f} ms",
            verdict,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="configs/quickstart.yaml", help="base config shared by every run")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=None,
        help=f"'{BASELINE}' and recipe YAMLs (default: {BASELINE} + every configs/model/*.yaml)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4, help="fixed schedule of every run")
    parser.add_argument("--flops-size", type=int, default=256, help="input side for the GFLOPs column")
    parser.add_argument("--out", default="docs/ablation", help="folder for runs.csv and table.md")
    parser.add_argument("--runs-dir", default="outputs/ablation", help="folder for each run's logs and W&B files")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (resume later)")
    args, extra = parser.parse_known_args(argv)  # anything else is passed to every `cli.py fit`

    recipes = args.recipes or [BASELINE, *sorted(str(p) for p in Path("configs/model").glob("*.yaml"))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "runs.csv"
    cost_path = out / "costs.csv"
    done = {(r["recipe"], int(r["seed"])) for r in read_rows(csv_path)}
    new_runs = 0
    # Seed-major order: an interrupted ablation still has every recipe at the first seeds.
    for seed in args.seeds:
        for recipe in recipes:
            name = recipe_name(recipe)
            configs = [args.base] + ([] if recipe == BASELINE else [recipe])
            if (name, seed) in done:
                continue
            if args.max_runs is not None and new_runs >= args.max_runs:
                break
            run_dir = (Path(args.runs_dir) / f"{name}-s{seed}").resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            override = run_dir / "run.yaml"
            override.write_text(yaml.safe_dump(run_overrides(run_dir, name, seed, args.epochs)))
            command = [
                sys.executable,
                "cli.py",
                "fit",
                *(a for c in configs for a in ("--config", c)),
                "--config",
                str(override),
                *extra,
            ]
            print(f"[ablation] {name} seed {seed}: {' '.join(command[1:])}", flush=True)
            start = time.perf_counter()
            with (run_dir / "log.txt").open("w") as log:
                subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
            summary = json.loads((run_dir / "summary.json").read_text())
            metrics = summary["metrics"]
            row = {
                "recipe": name,
                "seed": seed,
                **{m: round(metrics.get(f"val/{m}", math.nan), 5) for m in METRICS},
                "epochs": args.epochs,
                "seconds": round(time.perf_counter() - start, 1),
                "command": " ".join(["python", *command[1:]]),
            }
            append_row(csv_path, row)
            new_runs += 1
    costs = {r["recipe"]: r for r in read_rows(cost_path)}
    for recipe in recipes:  # after the runs, back to back, so step times are measured under the same load
        name = recipe_name(recipe)
        if name not in costs and any(r["recipe"] == name for r in read_rows(csv_path)):
            configs = [args.base] + ([] if recipe == BASELINE else [recipe])
            costs[name] = {"recipe": name, **measure_cost(configs, extra, args.flops_size)}
            append_row(cost_path, costs[name], COST_FIELDS)
    rows = read_rows(csv_path)
    table = build_table(rows, costs, args.flops_size) if rows else "(no finished runs)"
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
