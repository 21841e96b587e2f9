"""The allocator benchmark's smoke mode produces its table (no timing asserts)."""

import sys

import pytest

from tod_lightning.allocator import ENV_VAR


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_allocator_smoke_prints_both_settings(capsys, load_benchmark, monkeypatch):
    # A user's opt-out in the environment must not leak into the benchmark's processes: it chooses the setting.
    monkeypatch.setenv(ENV_VAR, "default")
    table = load_benchmark("allocator").main(["--smoke"])
    assert table == capsys.readouterr().out.strip()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| 64x64")]
    assert [r[1].strip() for r in rows] == ["default", "tuned"]
    assert rows[0][4].strip() == "1"
    ratio, spread = rows[1][4].split()
    assert float(ratio) > 0 and spread.startswith("(") and spread.endswith(")")
    for row in rows:
        assert float(row[2]) > 0  # step ms
        assert float(row[5]) >= 0 and float(row[6]) > 100  # page faults per step, peak RSS in MB (torch alone > 100)
