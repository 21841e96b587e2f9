"""Shared by the ``benchmarks/`` scripts: the machine description of their table headers (one place, so all tables
agree), the quickstart model, built from ``configs/quickstart.yaml`` itself (so the scripts cannot drift from it),
and a count of the torch operators a call runs (loops over boxes show up as counts that grow with the boxes)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Callable

import torch
import torchvision
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine() -> str:
    """CPU model, usable cores, GPU (if any) and the torch/torchvision versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu_model()}, {cores} cores{gpu}, torch {torch.__version__}, torchvision {torchvision.__version__}"


def quickstart_task(num_classes: int, config: str | Path = QUICKSTART, seed: int = 0):
    """The ``model`` of a LightningCLI config (default ``configs/quickstart.yaml``) as a :class:`DetectionTask`,
    parsed and instantiated by jsonargparse as ``cli.py`` does, with ``num_classes`` given (the CLI links it from
    the data) and the weights initialised from ``seed``."""
    from jsonargparse import ArgumentParser

    from tod_lightning.task import DetectionTask

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DetectionTask, "model", fail_untyped=False)
    model = yaml.safe_load(Path(config).read_text())["model"]
    torch.manual_seed(seed)
    return parser.instantiate(parser.parse_object({"model": {**model, "num_classes": num_classes}})).model


class _OpCounter(TorchDispatchMode):
    """Counts the operator calls that reach the dispatcher while it is active."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_torch_ops(fn: Callable[[], object]) -> int:
    """The number of torch operator calls ``fn()`` makes, its backward passes included.

    Every operator reaches the dispatcher, so a Python loop over boxes or images adds at least one call per
    iteration: a count that does not grow with the number of boxes shows that the work per box is inside tensor
    operations. Deterministic and device-independent, unlike a time.
    """
    with _OpCounter() as counter:
        fn()
    return counter.calls
