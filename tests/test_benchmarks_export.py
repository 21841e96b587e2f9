"""Smoke run of benchmarks/export.py: the quickstart is exported, verified and timed on both runtimes (no timing
asserts)."""


def test_smoke_table(capsys, load_benchmark):
    table = load_benchmark("export").main(["--smoke"])
    assert table == capsys.readouterr().out.strip()
    rows = [line for line in table.splitlines() if line.startswith("| quickstart")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[0] == "quickstart" and cells[5] == "64x64"
    assert abs(float(cells[1]) - 3.08) < 0.01  # the quickstart's parameters (ResNet-18 to stride 16, FPN, head)
    assert float(cells[4]) > 10  # MB: the weights are inside the file
    # times (export, verify to 10 ms, both runtimes' latency) were measured: the smoke verify takes ~50-100 ms
    assert all(float(cells[i]) > 0 for i in (2, 3, 6, 7))
