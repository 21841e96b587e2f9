"""The LightningCLI of tod_lightning (``python cli.py ...`` at the repository root calls :func:`main`)."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.cli import LightningCLI

from tod_lightning.callbacks import CocoPredictionWriter, LoggerSaveConfigCallback
from tod_lightning.data.datamodule import DetectionDataModule
from tod_lightning.task import DetectionTask


class TinyObjectCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The number of classes is a fact of the data, never retyped in a model config.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Always present; writes only in `predict`: --predict_writer.output_file dets.json
        parser.add_lightning_class_args(CocoPredictionWriter, "predict_writer")


def _wandb_offline_without_credentials() -> None:
    """Run W&B offline (logs kept locally, `wandb sync` later) unless the user has credentials."""
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    os.environ["WANDB_MODE"] = "offline"


def main(args=None, run: bool = True) -> TinyObjectCLI:
    """Run the CLI on ``args`` (default ``sys.argv``); ``run=False`` only builds model, data and trainer."""
    _wandb_offline_without_credentials()
    return TinyObjectCLI(
        DetectionTask,
        DetectionDataModule,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the task owns its optimizer and parameter groups
        args=args,
        run=run,
    )
