"""Smoke run of benchmarks/evaluation.py: the table is printed and AITODMetric equals pycocotools to 1e-6."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("pycocotools")


def load(name):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_rows_agree(capsys):
    bench = load("evaluation")
    result = bench.main(["--smoke"])
    out = capsys.readouterr().out
    assert "| AITODMetric (update + compute) |" in out and "max abs difference" in out
    assert set(result["diffs"]) == set(bench.ROW_KEYS)
    for key in bench.ROW_KEYS:
        assert result["ours"][key] == pytest.approx(result["ref"][key], abs=1e-6), key
        assert result["ref"][key] > 0  # every bin has ground truth in the generated case
