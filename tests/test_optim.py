"""Parameter groups and the default schedule."""

import pytest
import torch
from torch import nn

from tod_lightning.optim import ParamGroup, apply_lr_mult, build_param_groups, warmup_cosine


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.neck = nn.Conv2d(4, 4, 1)
        self.neck_threshold = nn.Parameter(torch.tensor(0.1))


def _groups_by_param(groups):
    return {id(p): g for g in groups for p in g["params"]}


def test_norms_biases_and_scalars_get_no_decay_and_rules_set_lr():
    net = _Net()
    groups = build_param_groups(net, [ParamGroup("backbone.", lr_mult=0.1)])
    optimizer = apply_lr_mult(torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05))
    by_param = _groups_by_param(optimizer.param_groups)
    conv_w, bn_w = net.backbone[0].weight, net.backbone[1].weight
    assert by_param[id(conv_w)]["lr"] == pytest.approx(1e-4) and by_param[id(conv_w)]["weight_decay"] == 0.05
    assert by_param[id(bn_w)]["lr"] == pytest.approx(1e-4) and by_param[id(bn_w)]["weight_decay"] == 0.0
    assert by_param[id(net.neck.weight)]["lr"] == pytest.approx(1e-3)
    assert by_param[id(net.neck.bias)]["weight_decay"] == 0.0
    assert by_param[id(net.neck_threshold)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_explicit_rule_overrides_the_no_decay_default():
    net = _Net()
    groups = build_param_groups(net, [ParamGroup("neck_threshold", lr_mult=1.0, weight_decay=1e-4)])
    optimizer = torch.optim.SGD(groups, lr=0.01)
    assert _groups_by_param(optimizer.param_groups)[id(net.neck_threshold)]["weight_decay"] == 1e-4


def test_warmup_then_cosine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup_steps=10, total_steps=110, min_ratio=0.0)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
