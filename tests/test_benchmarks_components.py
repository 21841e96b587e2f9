"""The components benchmark's smoke mode produces its table (no timing asserts)."""

import pytest


@pytest.fixture
def components(load_benchmark):
    return load_benchmark("components")


def test_components_smoke_prints_table(capsys, components):
    table = components.main(["--smoke"])
    assert table == capsys.readouterr().out.strip()  # header first, then each row as measured
    rows = [line for line in table.splitlines() if line.startswith("| 64x64")]
    names = {row.split("|")[2].strip() for row in rows}
    assert names == {
        "assign",
        "loss fwd",
        "loss fwd+bwd",
        "postprocess",
        "pp candidates",
        "pp nms",
        "pp nms torchvision",
    }
    assert len(rows) == 7 * 2  # two box counts per component
    # Post-processing finds every planted box (one detection per box after NMS) among its 5 planted candidates.
    dets = [row.split("|")[7].strip() for row in rows if "postprocess" in row]
    assert dets == ["5 dets/img", "20 dets/img"]
    candidates = [int(row.split("|")[7].split()[0]) for row in rows if "pp nms" in row]
    assert candidates[:2] == candidates[2:]  # ours and torchvision's NMS on the same candidates
    assert 5 < candidates[0] <= 5 * 5 and 20 < candidates[1] <= 5 * 20  # planted points may coincide


def test_assign_batch_matches_criterion(components):
    import torch

    from tod_lightning.losses.criterion import DetectionCriterion

    gen = torch.Generator().manual_seed(0)
    targets = components.random_targets(2, 64, 30, gen)
    out = components.random_output(2, 64, gen, requires_grad=False)
    crit = DetectionCriterion()
    gt_index = components.assign_batch(crit, out, targets)
    losses = crit(out, targets)
    assert gt_index.shape == (2, sum((64 // s) ** 2 for s in components.STRIDES))
    assert float(losses["num_pos"]) == float((gt_index >= 0).sum())
