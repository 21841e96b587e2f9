"""Shared by the ``benchmarks/`` scripts: the machine description of their table headers (one place, so all tables
agree), the quickstart model, built from ``configs/quickstart.yaml`` itself (so the scripts cannot drift from it),
and a count of the torch operators a call runs (loops over boxes show up as counts that grow with the boxes)."""

from __future__ import annotations

import os
import platform
from collections import Counter
from dataclasses import dataclass, field
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
    the data) and the weights initialised from ``seed``; ``pretrained: true`` is turned off (timing needs no
    weights, and benchmarks download nothing)."""
    from jsonargparse import ArgumentParser

    from tod_lightning.export import without_pretrained
    from tod_lightning.task import DetectionTask

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DetectionTask, "model", fail_untyped=False)
    model, _ = without_pretrained(yaml.safe_load(Path(config).read_text())["model"])
    torch.manual_seed(seed)
    return parser.instantiate(parser.parse_object({"model": {**model, "num_classes": num_classes}})).model


# Operators that make the host wait for an accelerator: a value or an output size computed on the device must reach
# the host first (torch.cuda.set_sync_debug_mode flags these on a GPU).
_SYNCING = {
    "aten.nonzero.default",
    "aten._local_scalar_dense.default",  # .item(), int(), bool(), .tolist()
    "aten.masked_select.default",
    "aten.equal.default",
    "aten.is_nonzero.default",
    "aten.bincount.default",  # its output size is the maximum
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
}


@dataclass
class OpCount:
    """Operator calls of a function: ``calls`` in all, and ``syncs``, those that would wait for an accelerator,
    by operator name (boolean-mask indexing as ``"aten.index.Tensor[bool]"``)."""

    calls: int = 0
    syncs: Counter = field(default_factory=Counter)

    @property
    def num_syncs(self) -> int:
        return sum(self.syncs.values())


class _OpCounter(TorchDispatchMode):
    """Counts the operator calls that reach the dispatcher while it is active."""

    def __init__(self):
        super().__init__()
        self.count = OpCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.count.calls += 1
        name = str(func)
        if name in _SYNCING:
            self.count.syncs[name] += 1
        elif name == "aten.repeat_interleave.Tensor" and kwargs.get("output_size") is None:
            self.count.syncs[name] += 1  # its output size is the sum of the repeats
        elif name.startswith(("aten.index.Tensor", "aten.index_put")) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            self.count.syncs[f"{name}[bool]"] += 1  # a boolean mask is a nonzero first
        return func(*args, **kwargs)


def count_torch_ops(fn: Callable[[], object]) -> OpCount:
    """The torch operator calls ``fn()`` makes, its backward passes included, and those among them that would make
    the host wait for an accelerator.

    Every operator reaches the dispatcher, so a Python loop over boxes or images adds at least one call per
    iteration: a count that does not grow with the number of boxes shows that the work per box is inside tensor
    operations. Deterministic and device-independent, unlike a time; run on CPU it counts the code path CPU
    tensors take (device-dependent schedules, such as the assigner's, can be forced for the count). Work handed
    to numpy or to the compiled CPU kernels (NMS, :mod:`tod_lightning.ops.grid_nms`, and the post-processing's
    gather, :mod:`tod_lightning.ops.dense_gather`, whose loops over boxes are machine code, not Python) is not
    seen: the CPU fast paths of :mod:`tod_lightning.ops.ordering` (``nonzero_1d``, the argsorts), which the NMS and
    post-processing use, run ``torch.nonzero``/``torch.sort`` only on other devices, so on CPU their host syncs are
    not counted.
    """
    with _OpCounter() as counter:
        fn()
    return counter.count
