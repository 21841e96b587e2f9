"""Shared by the tests that train through the real CLI on a tiny generated dataset."""

from __future__ import annotations

from pathlib import Path

from tod_lightning.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def tiny_data_args(tmp_path: Path, image_size: int = 96, num_train: int = 6, num_val: int = 3, batch_size: int = 3):
    return [
        f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.synthetic.image_size={image_size}",
        f"--data.synthetic.num_train={num_train}",
        f"--data.synthetic.num_val={num_val}",
        "--data.synthetic.dense_fraction=0.0",
        f"--data.batch_size={batch_size}",
        "--data.num_workers=0",
    ]


def quiet_trainer_args(tmp_path: Path) -> list[str]:
    return [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def fit_tiny(tmp_path: Path, *recipes: str, extra: tuple[str, ...] = (), **data):
    """One epoch of ``fit`` on ``configs/quickstart.yaml`` + ``recipes`` (paths relative to the repository),
    validated at its end; ``data`` overrides :func:`tiny_data_args`, ``extra`` is appended last."""
    configs = ["configs/quickstart.yaml", *recipes]
    return cli_main(
        [
            "fit",
            *(arg for c in configs for arg in ("--config", str(ROOT / c))),
            *tiny_data_args(tmp_path, **data),
            *quiet_trainer_args(tmp_path),
            "--trainer.max_epochs=1",
            "--trainer.check_val_every_n_epoch=1",
            *extra,
        ]
    )


def latest_checkpoint(cli) -> str:
    """The unmonitored "last" checkpoint of the run (saved every epoch)."""
    return next(c.best_model_path for c in cli.trainer.checkpoint_callbacks if c.monitor is None)
