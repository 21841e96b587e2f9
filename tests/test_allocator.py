"""tod_lightning's malloc settings: freed tensor blocks are reused, not page-faulted in again; opt-outs change nothing;
the CLI applies them."""

import ctypes
import json
import os
import subprocess
import sys

import pytest
from tiny_cli import ROOT

from tod_lightning import allocator
from tod_lightning import cli as cli_module

try:
    ctypes.CDLL(None).gnu_get_libc_version
    GLIBC = sys.platform.startswith("linux")
except (OSError, AttributeError):
    GLIBC = False

# Three 48 MiB temporaries per iteration, as a CPU step's activations: above glibc's largest dynamic mmap threshold
# (32 MiB), so by default each one is a fresh mmap whose 12288 pages fault in on first touch.
PROBE = """
import json, resource, sys
if sys.argv[1] == "tuned":
    from tod_lightning.allocator import tune_cpu_allocator
    applied = tune_cpu_allocator()
else:
    applied = None
import torch
for i in range(14):
    if i == 8:  # the heap grows over the first few iterations (blocks do not fit the holes at once), then holds
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(12 << 20)
    b = a * 2
    c = b + a
    assert float(c[-1]) == 3.0
    del a, b, c
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / 6
print(json.dumps({"applied": applied, "faults_per_iteration": faults}))
"""


def probe(setting: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != allocator.ENV_VAR} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, setting], env=environ, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_tuned_process_reuses_freed_blocks_instead_of_faulting_them_in():
    default, tuned = probe("default"), probe("tuned")
    pages = 3 * (48 << 20) // 4096  # three fresh 48 MiB mappings per iteration
    assert default["faults_per_iteration"] >= 0.9 * pages, default  # the probe does exercise fresh mappings
    assert tuned["applied"] is True
    assert tuned["faults_per_iteration"] < default["faults_per_iteration"] / 5, (default, tuned)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_opting_out_keeps_glibcs_behaviour():
    pages = 3 * (48 << 20) // 4096
    opted_out = probe("tuned", **{allocator.ENV_VAR: "default"})
    assert opted_out["applied"] is False
    assert opted_out["faults_per_iteration"] >= 0.9 * pages


@pytest.mark.parametrize("value", ["default", "0", "off", "FALSE", " Default "])
def test_opt_out_values_change_nothing(value, monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, value)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("mallopt must not be reached"))
    assert allocator.tune_cpu_allocator() is False


def test_preloaded_allocator_or_other_platform_changes_nothing(monkeypatch):
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    calls = []

    class FakeLibc:
        gnu_get_libc_version = object()

        def mallopt(self, *args):
            calls.append(args)
            return 1

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: FakeLibc())
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert allocator.tune_cpu_allocator() is False
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_cpu_allocator() is False
    assert calls == []


def test_both_thresholds_are_set_and_a_refusal_is_reported(monkeypatch):
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    calls, answers = [], {}

    class Mallopt:
        def __call__(self, param, value):
            calls.append((param, value))
            return answers.get(param, 1)

    class FakeLibc:
        gnu_get_libc_version = object()
        mallopt = Mallopt()

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: FakeLibc())
    assert allocator.tune_cpu_allocator() is True
    # M_MMAP_THRESHOLD (-3) and M_TRIM_THRESHOLD (-1): setting one alone stops glibc adjusting the other.
    assert calls == [(-3, allocator.MMAP_THRESHOLD), (-1, allocator.TRIM_THRESHOLD)]
    calls.clear()
    answers[-1] = 0  # glibc refuses the trim threshold: reported
    assert allocator.tune_cpu_allocator() is False
    calls.clear()
    answers[-3] = 0  # ... or the mmap threshold: then the trim threshold is left alone (set alone, it slows malloc)
    assert allocator.tune_cpu_allocator() is False
    assert calls == [(-3, allocator.MMAP_THRESHOLD)]
    answers.clear()
    calls.clear()
    allocator.tune_cpu_allocator(mmap_threshold=1 << 40, trim_threshold=1 << 40)
    assert calls == [(-3, 2**31 - 1), (-1, 2**31 - 1)]  # mallopt takes a C int


def test_not_glibc_changes_nothing(monkeypatch):
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")

    class Musl:  # no gnu_get_libc_version
        def mallopt(self, *args):
            pytest.fail("not glibc: mallopt must not be called")

    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: Musl())
    assert allocator.tune_cpu_allocator() is False


def test_cli_main_tunes_the_allocator_first(monkeypatch, caplog):
    order = []
    monkeypatch.setattr(cli_module, "tune_cpu_allocator", lambda: order.append("malloc") or True)
    monkeypatch.setattr(cli_module, "_wandb_offline_without_credentials", lambda: order.append("wandb"))
    monkeypatch.chdir(ROOT)
    with caplog.at_level("INFO"), pytest.raises(SystemExit):
        cli_module.main(["fit", "--config", "configs/quickstart.yaml", "--print_config"])
    assert order == ["malloc", "wandb"]
    assert "glibc malloc: mmap threshold 512 MiB, trim threshold 1024 MiB" in caplog.text
