"""Smoke run of benchmarks/data_pipeline.py: loader and model rates are measured and tabulated."""

import math


def test_smoke_table(capsys, load_benchmark):
    rows = load_benchmark("data_pipeline").main(["--smoke"])
    out = capsys.readouterr().out
    assert "| data | workers | loader img/s |" in out
    assert [r["workers"] for r in rows] == [0, 1]
    for r in rows:
        assert math.isfinite(r["loader"]) and r["loader"] > 0 and r["model"] > 0
