"""Parameter groups (per-module learning rate, no weight decay on norms and biases) and the default schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class ParamGroup:
    """Settings for the parameters whose name starts with ``prefix`` (e.g. ``detector.backbone.``).

    Attributes:
        prefix: parameter-name prefix; the first matching group wins, in the order given.
        lr_mult: multiplies the optimizer's base learning rate.
        weight_decay: overrides the optimizer's weight decay (``0.0`` to disable); ``None`` keeps it.
    """

    prefix: str
    lr_mult: float = 1.0
    weight_decay: float | None = None


def build_param_groups(module: nn.Module, groups: list[ParamGroup], no_decay_norm_bias: bool = True) -> list[dict]:
    """Split trainable parameters into optimizer groups.

    Norm weights, biases and scalars (tensors of at most one dimension) get no weight decay when
    ``no_decay_norm_bias`` (decaying them only shrinks the normalisation scale), unless a rule sets one.
    Returns torch optimizer groups, each with ``name`` for logging and ``lr_mult``, which
    :func:`apply_lr_mult` turns into a learning rate once the optimizer (and so the base learning rate,
    chosen in YAML) exists.
    """
    buckets: dict[tuple, dict] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        rule = next((g for g in groups if name.startswith(g.prefix)), None)
        no_decay = no_decay_norm_bias and param.ndim <= 1
        lr_mult = rule.lr_mult if rule else 1.0
        # An explicit rule wins over the norm/bias default (e.g. SR-TOD's official mode decays its threshold).
        explicit = rule is not None and rule.weight_decay is not None
        wd = rule.weight_decay if explicit else (0.0 if no_decay else None)
        no_decay = wd == 0.0
        key = (rule.prefix if rule else "default", lr_mult, wd)
        if key not in buckets:
            group = {"params": [], "lr_mult": lr_mult, "name": f"{key[0]}{'/no_decay' if no_decay else ''}"}
            if wd is not None:
                group["weight_decay"] = wd
            buckets[key] = group
        buckets[key]["params"].append(param)
    return list(buckets.values())


def apply_lr_mult(optimizer: Optimizer) -> Optimizer:
    """Scale each group's learning rate (the optimizer's base rate) by its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
    return optimizer


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01) -> LambdaLR:
    """Linear warm-up from ~0 then cosine decay to ``min_ratio`` of each group's learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
