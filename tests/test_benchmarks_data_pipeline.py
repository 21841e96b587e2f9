"""Smoke run of benchmarks/data_pipeline.py: loader and model rates are measured and tabulated."""

import math


def test_smoke_table(capsys, load_benchmark):
    rows = load_benchmark("data_pipeline").main(["--smoke"])
    out = capsys.readouterr().out
    assert "| data | workers | decodes per frame | timed batches | loader img/s |" in out
    assert [(r["data"], r["workers"]) for r in rows] == [
        ("synthetic 64x64", 0),
        ("synthetic 64x64", 1),
        ("tiles 64/16 of 96x128", 0),
        ("tiles 64/16 of 96x128", 1),
        ("tiles 64/16 of 96x128, 2 frames per group", 0),
        ("tiles 64/16 of 96x128, 2 frames per group", 1),
    ]
    assert all(r["batch"] == 2 for r in rows)  # tiles are samples like images
    # Frame groups are timed over a whole group (2 frames x 6 tiles = 6 batches of 2), the rest over --batches (2).
    assert [r["batches"] for r in rows] == [2, 2, 2, 2, 6, 6]
    # An image decodes once an epoch; a tile of 6 decodes its frame, 6 per frame, unless frame groups reuse it.
    assert [r["decodes"] for r in rows] == [1, 1, 6, 6, 1, 1]
    for r in rows:
        assert math.isfinite(r["loader"]) and r["loader"] > 0 and r["model"] > 0
