"""Smoke run of benchmarks/amp_gpu.py on CPU: each precision CPU has trains through the real CLI (no timings)."""


def test_smoke_trains_each_precision(capsys, load_benchmark, tmp_path):
    assert load_benchmark("amp_gpu").main(["--smoke", "--cache-dir", str(tmp_path)]) == 0  # 0: every loss finite
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("CPU: 3 steps (1 warm-up) x batch 2 x 64 px")
    header, *rows = [line for line in lines if line.startswith(("precision", "32-true", "bf16-mixed", "16-mixed"))]
    assert header.split()[:3] == ["precision", "images/s", "peak"]
    assert [r.split()[0] for r in rows] == ["32-true", "bf16-mixed"]  # 16-mixed needs CUDA
    for r in rows:
        values = r.split()
        assert float(values[1]) > 0 and values[3] != "n/a" and values[-1] == "True"  # images/s, loss, finite
