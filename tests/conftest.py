"""Test-wide settings: W&B offline and silent, no network, deterministic small CPU runs."""

import os

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
