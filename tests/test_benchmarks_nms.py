"""The NMS benchmark's smoke mode produces its table and checks the kept sets (no timing asserts)."""


def test_nms_smoke_prints_table(capsys, load_benchmark):
    table = load_benchmark("nms").main(["--smoke"])
    assert table == capsys.readouterr().out.strip()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[8].strip() for row in rows] == ["grid", "grid"]  # every CPU case
    assert all(0 < int(row.split("|")[9]) < int(row.split("|")[1]) for row in rows)  # duplicates removed
