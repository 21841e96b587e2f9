"""The NMS benchmark's smoke mode produces its table and checks the kept sets (no timing asserts)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import nms as nms_benchmark  # noqa: E402


def test_nms_smoke_prints_table(capsys):
    table = nms_benchmark.main(["--smoke"])
    assert table == capsys.readouterr().out.strip()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[7].strip() for row in rows] == ["sparse", "torchvision"]  # one group of 5000; 4 of 150
    assert all(0 < int(row.split("|")[8]) < int(row.split("|")[1]) for row in rows)  # duplicates removed
