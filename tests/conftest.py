"""Test-wide settings: W&B offline and silent, no network, deterministic small CPU runs."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # pretrained=False everywhere; make any hub access fail fast


@pytest.fixture(autouse=True)
def _seed_and_isolate(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield
    # A CLI run that ends without Lightning finalizing its logger (predict, an exception) leaves its W&B run
    # open, and the next test's WandbLogger would silently log into it, in the previous test's folder.
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture
def load_benchmark():
    """``load_benchmark(name)``: the module ``benchmarks/<name>.py`` (the scripts are not a package)."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
        return module

    return load
