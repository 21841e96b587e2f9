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
    dets = [row.split("|")[9].strip() for row in rows if "postprocess" in row]
    assert dets == ["5 dets/img", "20 dets/img"]
    candidates = [int(row.split("|")[9].split()[0]) for row in rows if "pp nms" in row]
    assert candidates[:2] == candidates[2:]  # ours and torchvision's NMS on the same candidates
    assert 5 < candidates[0] <= 5 * 5 and 20 < candidates[1] <= 5 * 20  # planted points may coincide
    ops = [int(row.split("|")[8]) for row in rows]
    assert all(n > 10 for n in ops)  # every component's operator calls are counted
    quartiles = [tuple(map(float, row.split("|")[7].split("-"))) for row in rows]
    assert all(0 < lo <= hi for lo, hi in quartiles)  # run-by-run ratios: p25 <= p75
    assert all(q == (1.0, 1.0) for q, row in zip(quartiles, rows) if row.split("|")[3].strip() == "5")


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


def test_torch_op_count_does_not_grow_with_the_boxes(components):
    """The acceptance point behind the benchmark's time ratio, without timing: assignment, loss (backward included)
    and post-processing make about as many torch operator calls for 2000 boxes per image as for 100. A Python loop
    over boxes would add at least one call per box (2 x 1900 here); what grows is a bounded number of rounds."""
    import torch

    from tod_lightning.benchmarking import count_torch_ops
    from tod_lightning.losses.criterion import DetectionCriterion
    from tod_lightning.models.postprocess import PostProcessor
    from tod_lightning.ops.nms import uses_grid

    size, batch = 256, 2
    criterion, post = DetectionCriterion(), PostProcessor()
    image_sizes = torch.tensor([[size, size]] * batch)
    calls = {}
    for n in (100, 2000):
        gen = torch.Generator().manual_seed(0)
        targets = components.random_targets(batch, size, n, gen)
        out = components.random_output(batch, size, gen, requires_grad=True)
        planted = components.planted_output(targets, size, gen)
        calls[n] = {
            "assign": count_torch_ops(lambda: components.assign_batch(criterion, out, targets)).calls,
            "loss fwd+bwd": count_torch_ops(lambda: criterion(out, targets)["loss"].backward()).calls,
            "postprocess": count_torch_ops(lambda: post(planted, image_sizes)).calls,
        }
        boxes_xyxy, _, labels, image_idx = post.candidates(planted, image_sizes)
        # ~500 and ~9000 candidates: both on the compiled grid NMS (its loops are not torch operators).
        assert uses_grid(boxes_xyxy, post.nms_iou) and len(boxes_xyxy) > 900
    for name in calls[100]:
        assert calls[100][name] > 100, name
        assert calls[2000][name] - calls[100][name] < 2000 - 100, (name, calls)


def test_train_step_component_is_opt_in_and_trains(components, monkeypatch):
    """``train step`` runs only when asked, and what it times is a whole training step of the quickstart model: its
    operator count covers more than the loss's forward and backward, and the weights move."""
    import torch

    from tod_lightning.benchmarking import quickstart_task

    built, initial = [], []

    def spy(num_classes):
        task = quickstart_task(num_classes)
        built.append(task)
        initial.extend(p.detach().clone() for p in task.detector.parameters())
        return task

    monkeypatch.setattr(components, "quickstart_task", spy)
    components.main(["--smoke", "--components", "assign"])
    assert built == []  # not built unless asked
    table = components.main(["--smoke", "--components", "loss fwd+bwd", "train step", "--runs", "1"])
    rows = [line for line in table.splitlines() if line.startswith("| 64x64")]
    assert [row.split("|")[2].strip() for row in rows] == ["loss fwd+bwd"] * 2 + ["train step"] * 2
    ops = {(row.split("|")[2].strip(), row.split("|")[3].strip()): int(row.split("|")[8]) for row in rows}
    for boxes in ("5", "20"):  # the step runs the loss and backward too, and the detector and optimizer besides
        assert ops[("train step", boxes)] > ops[("loss fwd+bwd", boxes)] + 100
    assert len(built) == 1  # one model per geometry, the same for every box count
    moved = [not torch.equal(a, b.detach()) for a, b in zip(initial, built[0].detector.parameters())]
    assert sum(moved) > len(moved) // 2  # SGD steps ran (a few parameters may get no gradient)
