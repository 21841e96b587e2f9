"""The benchmarks' quickstart model is the one the real CLI builds from configs/quickstart.yaml."""

import torch
from tiny_cli import ROOT, quiet_trainer_args, tiny_data_args

from tod_lightning.benchmarking import count_torch_ops, quickstart_task
from tod_lightning.cli import main as cli_main


def test_quickstart_task_is_the_clis_model(tmp_path):
    cli = cli_main(
        ["--config", str(ROOT / "configs/quickstart.yaml"), *tiny_data_args(tmp_path), *quiet_trainer_args(tmp_path)],
        run=False,
    )
    ours = quickstart_task(cli.datamodule.num_classes)
    theirs = {k: v.shape for k, v in cli.model.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs and len(theirs) > 50
    assert type(ours.criterion) is type(cli.model.criterion)
    assert list(ours.detector.backbone.out_strides) == list(cli.model.detector.backbone.out_strides) == [4, 8, 16]
    torch.testing.assert_close(quickstart_task(3).state_dict(), quickstart_task(3).state_dict())  # seeded


def test_count_torch_ops_sees_loops_and_backward():
    boxes_xyxy = torch.rand(50, 4, requires_grad=True)
    vectorised = count_torch_ops(lambda: (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).prod(1).sum()).calls
    looped = count_torch_ops(lambda: sum((b[2:] - b[:2]).prod() for b in boxes_xyxy)).calls
    assert vectorised < 10 and looped >= 3 * 50  # a loop over boxes: calls per box
    forward = count_torch_ops(lambda: (boxes_xyxy * 2).sum()).calls
    assert count_torch_ops(lambda: (boxes_xyxy * 2).sum().backward()).calls > forward  # backward's calls too


def test_count_torch_ops_names_the_host_syncs():
    x = torch.arange(10.0)
    count = count_torch_ops(lambda: (x[x > 4].sum().item(), (x > 4).nonzero(), torch.bincount(x.long()), x[:3]))
    assert count.syncs == {
        "aten.index.Tensor[bool]": 1,
        "aten._local_scalar_dense.default": 1,
        "aten.nonzero.default": 1,
        "aten.bincount.default": 1,
    }
    counts = torch.tensor([1, 2])
    free = count_torch_ops(lambda: (torch.repeat_interleave(counts, counts, output_size=3), x.index_select(0, counts)))
    assert free.num_syncs == 0 and free.calls >= 2  # sizes known on the host: no wait
    assert count_torch_ops(lambda: torch.repeat_interleave(counts, counts)).num_syncs == 1
