"""Machine description for the table headers of the ``benchmarks/`` scripts (one place, so all tables agree)."""

from __future__ import annotations

import os
import platform

import torch
import torchvision


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
