"""Host synchronisations of a training step on an accelerator, counted on CPU: every operator that needs a
device-side value or output size on the host (``tod_lightning.benchmarking.count_torch_ops``) is one."""

import pytest
import torch

from tod_lightning.benchmarking import count_torch_ops, quickstart_task
from tod_lightning.structures import Target


def _targets(num_boxes: int, size: int, gen: torch.Generator) -> list[Target]:
    targets = []
    for _ in range(2):
        wh = 2 + 14 * torch.rand(num_boxes, 2, generator=gen)
        xy = torch.rand(num_boxes, 2, generator=gen) * (size - wh)
        targets.append(Target(boxes_xyxy=torch.cat([xy, xy + wh], 1), labels=torch.randint(0, 4, (num_boxes,))))
    return targets


@pytest.fixture(scope="module")
def task():
    task = quickstart_task(4)
    task.criterion.assigner.sync_free = True  # the schedule the assigner takes on an accelerator
    return task


def test_training_step_waits_for_the_device_once(task):
    """One wait per step, for the criterion's positives (nonzero): the assigner, the box loss (no boolean-mask
    indexing, unlike torchvision's IoU losses), forward and backward need none, whatever the boxes."""
    size, gen = 128, torch.Generator().manual_seed(0)
    images01 = torch.rand(2, 3, size, size, generator=gen)
    for num_boxes in (10, 400):
        targets = _targets(num_boxes, size, gen)
        count = count_torch_ops(lambda: task.criterion(task.detector(images01), targets, images01)["loss"].backward())
        assert dict(count.syncs) == {"aten.nonzero.default": 1}


def test_the_cpu_schedule_of_the_assigner_syncs_per_round(task):
    """On CPU the forced rounds find the lonely boxes with nonzero (free there): more syncs, same result."""
    size, gen = 64, torch.Generator().manual_seed(1)
    images01 = torch.rand(2, 3, size, size, generator=gen)
    targets = _targets(300, size, gen)  # crowded: boxes left without a positive need forced rounds
    output = task.detector(images01)
    assigner = task.criterion.assigner
    try:
        assigner.sync_free = False
        cpu = count_torch_ops(lambda: task.criterion(output, targets, images01))
        cpu_losses = task.criterion(output, targets, images01)
    finally:
        assigner.sync_free = True
    accel = count_torch_ops(lambda: task.criterion(output, targets, images01))
    assert cpu.syncs["aten.nonzero.default"] > accel.syncs["aten.nonzero.default"] == 1
    torch.testing.assert_close(task.criterion(output, targets, images01), cpu_losses, rtol=0, atol=0)
