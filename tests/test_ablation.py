"""The ablation runner: real CLI runs, resumable CSV, table with mean ± std and a verdict per method."""

import csv
from pathlib import Path

from tod_lightning import ablation

ROOT = Path(__file__).resolve().parents[1]


def test_runs_through_the_cli_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = [
        "--recipes", "baseline", "--seeds", "0", "--epochs", "1",
        "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
        f"--data.cache_dir={tmp_path / 'cache'}", "--data.synthetic.image_size=96", "--data.synthetic.num_train=4",
        "--data.synthetic.num_val=2", "--data.synthetic.dense_fraction=0.0", "--data.num_workers=0",
    ]  # fmt: skip
    ablation.main(args)
    rows = list(csv.DictReader((tmp_path / "out/runs.csv").open()))
    assert [(r["recipe"], r["seed"]) for r in rows] == [("baseline", "0")]
    assert 0.0 <= float(rows[0]["AP50"]) <= 1.0
    (cost,) = csv.DictReader((tmp_path / "out/costs.csv").open())
    assert float(cost["params_M"]) > 1 and float(cost["gflops"]) > 0 and float(cost["step_ms"]) > 0
    summary = (tmp_path / "runs/baseline-s0/summary.json").read_text()
    assert '"val/AP_vt"' in summary
    ablation.main(args)  # resumes: nothing left to run, no duplicate row
    assert len(list(csv.DictReader((tmp_path / "out/runs.csv").open()))) == 1
    assert "| baseline | 1 |" in (tmp_path / "out/table.md").read_text()


def _row(recipe, seed, ap):
    return {"recipe": recipe, "seed": seed, **{m: ap for m in ablation.METRICS}}


def test_table_mean_std_relative_step_time_and_verdict():
    rows = [_row("baseline", 0, 0.30), _row("baseline", 1, 0.40), _row("baseline", 2, 0.50),
            _row("m1", 0, 0.20), _row("m1", 1, 0.30), _row("m2", 0, 0.60)]  # fmt: skip
    costs = {name: {"params_M": 1.0, "gflops": 2.0, "step_ms": ms} for name, ms in
             (("baseline", 100), ("m1", 150), ("m2", 50))}  # fmt: skip
    table = ablation.build_table(rows, costs, 256)
    baseline_line = next(line for line in table.splitlines() if line.startswith("| baseline"))
    assert "0.400 ± 0.100" in baseline_line and "1.00×" in baseline_line
    m1 = next(line for line in table.splitlines() if line.startswith("| m1"))
    assert "0.250 ± 0.071" in m1 and "1.50×" in m1 and "-0.150 (not better)" in m1
    m2 = next(line for line in table.splitlines() if line.startswith("| m2"))
    assert "+0.200" in m2 and "not better" not in m2 and "0.50×" in m2
