"""Smoke run of benchmarks/evaluation.py: the table is printed and AITODMetric equals pycocotools to 1e-6."""

import pytest


def test_smoke_rows_agree(capsys, load_benchmark):
    bench = load_benchmark("evaluation")
    result = bench.main(["--smoke"])
    out = capsys.readouterr().out
    assert "| AITODMetric (update + compute) |" in out and "max abs difference" in out
    assert set(result["diffs"]) == set(bench.ROW_KEYS)
    for key in bench.ROW_KEYS:
        assert result["ours"][key] == pytest.approx(result["ref"][key], abs=1e-6), key
        assert result["ref"][key] > 0  # every bin has ground truth in the generated case
