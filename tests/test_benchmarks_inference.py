"""Smoke run of benchmarks/inference.py: latency and memory of whole and sliced inference are tabulated.

Run as a script (each case runs in a spawned process, which must re-import the benchmark as ``__main__``).
"""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "inference.py"


def test_smoke_table():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "latency" not in line]
    assert len(rows) == 3 and "sliced 96/16" in rows[2]
    for row in rows:
        latency, peak = row.split("|")[2].split()[0], row.split("|")[4]
        assert float(latency) > 0 and float(peak) > 0
