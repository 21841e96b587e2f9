"""Smoke run of benchmarks/train_step.py: the table is produced (no timing asserts)."""

import math

import pytest


def test_smoke_table(capsys, load_benchmark):
    bench = load_benchmark("train_step")
    assert bench.main(["--smoke", "--case", "dense"]) == 0
    out = capsys.readouterr().out
    assert "| case | model | ours ms | FCOS ms | ratio median | ratio p10-p90 |" in out
    assert "torch " in out and "torchvision " in out and "Machine:" in out
    rows = [line for line in out.splitlines() if line.startswith("| dense")]
    assert len(rows) == 2  # ours P3-P7 against FCOS, and our P2-P7 configuration
    for row in rows:
        loss = float(row.strip("|").split("|")[-1])
        assert math.isfinite(loss)


def test_matched_architecture(load_benchmark):
    """Both sides: same ResNet with trainable BatchNorm2d, five levels of 256 channels, 4-conv GN towers."""
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    bench = load_benchmark("train_step")
    images01, targets = bench.make_batch(1, 128, 3, 4, 32, seed=0)
    ours = bench.build_ours("resnet18", 3, images01, targets).model
    fcos = bench.build_fcos("resnet18", 128, images01, targets).model

    def count(model, kind):
        return sum(isinstance(m, kind) for m in model.modules())

    for kind in (nn.BatchNorm2d, nn.GroupNorm):
        assert count(ours, kind) == count(fcos, kind), kind
    assert count(fcos, FrozenBatchNorm2d) == count(ours, FrozenBatchNorm2d) == 0
    assert ours.strides == [8, 16, 32, 64, 128]
    assert len(fcos.anchor_generator.sizes) == 5
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    n_fcos = sum(p.numel() for p in fcos.parameters() if p.requires_grad)
    # Same backbone/FPN/towers; the heads differ only in their last convs (quality vs centerness, class count).
    assert n_ours == pytest.approx(n_fcos, rel=1e-3)
