"""Smoke run of benchmarks/data_pipeline.py: loader and model rates are measured and tabulated."""

import importlib.util
import math
from pathlib import Path


def load(name):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_table(capsys):
    rows = load("data_pipeline").main(["--smoke"])
    out = capsys.readouterr().out
    assert "| data | workers | loader img/s |" in out
    assert [r["workers"] for r in rows] == [0, 1]
    for r in rows:
        assert math.isfinite(r["loader"]) and r["loader"] > 0 and r["model"] > 0
