"""The LightningCLI of tod_lightning (``python cli.py ...`` at the repository root calls :func:`main`)."""

from __future__ import annotations

import importlib
import netrc
import os

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from tod_lightning.allocator import ENV_VAR as MALLOC_ENV_VAR
from tod_lightning.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, tune_cpu_allocator
from tod_lightning.callbacks import CocoPredictionWriter, LoggerSaveConfigCallback, WandbRunId, read_wandb_run_id
from tod_lightning.data.datamodule import DetectionDataModule
from tod_lightning.task import DetectionTask


class TinyObjectCLI(LightningCLI):
    """LightningCLI with the data-to-model links and the W&B run continuity of tod_lightning.

    * Every trainer gets a :class:`WandbRunId` callback: checkpoints store the W&B run id.
    * ``fit --ckpt_path PATH`` continues the W&B run stored in ``PATH`` (W&B's ``resume="allow"``, which
      :class:`WandbLogger` passes): the id is set as ``trainer.logger.init_args.id`` before the logger is built,
      so it is also in the uploaded config. An id given by the user (``--trainer.logger.init_args.id``, ``version``
      or the ``WANDB_RUN_ID`` that sweep agents set) wins; ``--resume_wandb_run=false`` starts a new run.
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The number of classes is a fact of the data, never retyped in a model config.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Always present; writes only in `predict`: --predict_writer.output_file dets.json
        parser.add_lightning_class_args(CocoPredictionWriter, "predict_writer")
        parser.add_argument(
            "--resume_wandb_run",
            type=bool,
            default=True,
            help="With fit --ckpt_path: continue the W&B run whose id the checkpoint stores (false: a new run).",
        )

    def before_instantiate_classes(self) -> None:
        # The logger is built with the trainer, from this config: the id has to be in it before.
        if self.subcommand == "fit":
            continue_wandb_run(self.config.fit)

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, WandbRunId) for c in trainer.callbacks):
            trainer.callbacks.append(WandbRunId())
        return trainer


def continue_wandb_run(config) -> str | None:
    """Sets the W&B logger's ``id`` in a parsed ``fit`` config to the run id stored in its ``ckpt_path``.

    Returns the id set, or ``None`` when nothing changed: no ``ckpt_path`` or no id stored in it, no
    :class:`WandbLogger` in ``trainer.logger``, ``resume_wandb_run`` false, or an id chosen by the user
    (``init_args.id``, ``init_args.version`` or the ``WANDB_RUN_ID`` environment variable).
    """
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or not config.get("resume_wandb_run", True) or os.environ.get("WANDB_RUN_ID"):
        return None
    loggers = config.get("trainer.logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not _is_wandb_logger(logger):
            continue
        init_args = logger.get("init_args")
        if init_args is None or init_args.get("id") or init_args.get("version"):
            return None  # an explicit id wins
        run_id = read_wandb_run_id(ckpt_path)
        if run_id:
            init_args["id"] = run_id
            rank_zero_info(
                f"Continuing W&B run {run_id} (stored in {ckpt_path}); --resume_wandb_run=false for a new run"
            )
        return run_id
    return None


def _is_wandb_logger(logger) -> bool:
    class_path = logger.get("class_path") if hasattr(logger, "get") else None
    if not class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, WandbLogger)


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
    """Run the CLI on ``args`` (default ``sys.argv``); ``run=False`` only builds model, data and trainer.

    The process first gets tod_lightning's malloc settings (:mod:`tod_lightning.allocator`: CPU steps 15-21 %
    faster; ``TOD_LIGHTNING_MALLOC=default`` keeps glibc's).
    """
    if tune_cpu_allocator():
        rank_zero_info(
            f"glibc malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB "
            f"(freed CPU tensor memory is reused; {MALLOC_ENV_VAR}=default keeps glibc's settings)"
        )
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
