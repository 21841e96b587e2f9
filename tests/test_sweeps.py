"""W&B sweep files drive the real LightningCLI.

Every file in ``configs/sweeps/`` joins automatically. Each must be a valid W&B sweep whose metric the task logs,
and whose ``command`` puts ``fit`` and the config files before ``${args}``. Several draws of its parameters are
turned into the exact argv a W&B agent would run, using wandb's own formatting code. Each swept value must reach
the object it configures: the SR-TOD neck, the assigner, the tiler and the sliced inference, the optimizer, the seed.
No training runs: the CLI is built with ``run=False``.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from tiny_cli import ROOT, quiet_trainer_args, tiny_data_args
from wandb.sdk.launch.sweeps.utils import DEFAULT_SWEEP_COMMAND, create_sweep_command, create_sweep_command_args

from tod_lightning.cli import main as cli_main
from tod_lightning.metrics import AITODMetric
from tod_lightning.models.necks.srtod import SRTOD
from tod_lightning.optim import apply_lr_mult, build_param_groups

SWEEP_DIR = ROOT / "configs" / "sweeps"
SWEEPS = sorted(p.name for p in SWEEP_DIR.glob("*.yaml"))

# Top-level keys of a W&B sweep config (the sweeps JSON schema, plus run_cap).
SWEEP_KEYS = {
    "program", "method", "metric", "parameters", "command", "name", "description", "project", "entity",
    "early_terminate", "run_cap", "controller", "apiVersion", "kind",
}  # fmt: skip
REQUIRED_KEYS = {"program", "method", "metric", "parameters", "command"}
# min/max are the values themselves (not their logarithms, as in log_uniform / q_log_uniform).
RANGE_DISTRIBUTIONS = {"uniform", "int_uniform", "log_uniform_values", "q_uniform", "q_log_uniform_values"}
LOG_SPACE_DISTRIBUTIONS = {"log_uniform", "q_log_uniform", "inv_log_uniform"}
# The one parameter name that is not a setting: each value is an inline YAML config, passed as one more
# ``--config=...`` that may set several settings at once (tiles.yaml sets both tile sizes with it).
INLINE_CONFIG = "config"


def _load(name: str) -> dict:
    return yaml.safe_load((SWEEP_DIR / name).read_text())


# ------------------------------------------------------------------------------------------- what W&B does
def logged_metric_names() -> set[str]:
    """The validation metrics the task logs (``val/<key>`` for every key of the metric's ``compute()``)."""
    metric = AITODMetric()
    box_xyxy = torch.tensor([[10.0, 10.0, 16.0, 16.0]])
    metric.update(
        [{"boxes_xyxy": box_xyxy, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}],
        [{"boxes_xyxy": box_xyxy, "labels": torch.tensor([0]), "image_id": 1}],
    )
    return {f"val/{key}" for key in metric.compute()}


def draws(parameters: dict) -> list[dict[str, Any]]:
    """Parameter sets covering every categorical value at least once, and both ends of every range."""
    n = max([2, *(len(spec["values"]) for spec in parameters.values() if "values" in spec)])
    out = []
    for i in range(n):
        draw = {}
        for key, spec in parameters.items():
            if "value" in spec:
                draw[key] = spec["value"]
            elif "values" in spec:
                draw[key] = spec["values"][i % len(spec["values"])]
            else:
                value = spec["min"] if i % 2 == 0 else spec["max"]
                draw[key] = int(value) if spec.get("distribution") == "int_uniform" else value
        out.append(draw)
    return out


def agent_argv(sweep: dict, params: dict[str, Any]) -> list[str]:
    """The argv that ``wandb agent`` starts for one run, macros expanded as wandb's ``Agent._command_run`` does
    (wandb 0.31, POSIX): ``${env}`` is ``/usr/bin/env``, ``${interpreter}`` is ``python``, ``${args}`` is
    ``--key=str(value)`` per parameter (formatted by wandb's own ``create_sweep_command_args``)."""
    command = create_sweep_command(list(sweep.get("command") or DEFAULT_SWEEP_COMMAND))
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    argv: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def cli_args(sweep: dict, params: dict[str, Any]) -> list[str]:
    """What ``cli.py`` receives as ``sys.argv[1:]`` from the agent (it runs it from the repository root)."""
    argv = agent_argv(sweep, params)
    return argv[argv.index(sweep["program"]) + 1 :]


# ------------------------------------------------------------------------- where each swept value must land
def _srtod(cli) -> SRTOD:
    (neck,) = [n for n in cli.model.detector.necks if isinstance(n, SRTOD)]
    return neck


def _optimizer(cli) -> torch.optim.Optimizer:
    """The optimizer as ``DetectionTask.configure_optimizers`` builds it (without its schedule)."""
    return apply_lr_mult(cli.model.optimizer_factory(build_param_groups(cli.model, cli.model.param_groups)))


PROBES: dict[str, Callable[[Any], Any]] = {
    "model.necks.init_args.t_init": lambda cli: _srtod(cli).threshold.item(),
    "model.necks.init_args.threshold_mode": lambda cli: _srtod(cli).threshold_mode,
    "model.necks.init_args.ste_tau": lambda cli: _srtod(cli).ste_tau,
    "model.necks.init_args.mask_resize": lambda cli: _srtod(cli).mask_resize,
    "model.criterion.init_args.assigner.init_args.similarity": lambda cli: cli.model.criterion.assigner.similarity,
    "data.train_tiling.init_args.tile_size": lambda cli: cli.datamodule.train_tiling.tile_size,
    "data.train_tiling.init_args.overlap": lambda cli: cli.datamodule.train_tiling.overlap,
    "model.inference.init_args.tile_size": lambda cli: cli.model.inference.tile_size,
    "model.inference.init_args.overlap": lambda cli: cli.model.inference.overlap,
    "model.optimizer.init_args.lr": lambda cli: _optimizer(cli).defaults["lr"],
    "model.optimizer.init_args.weight_decay": lambda cli: _optimizer(cli).defaults["weight_decay"],
    "seed_everything": lambda cli: int(os.environ["PL_GLOBAL_SEED"]),  # what LightningCLI seeded
}


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and "class_path" not in value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def expected_settings(params: dict[str, Any]) -> dict[str, Any]:
    """Swept parameters as settings; an inline config contributes each of its leaves."""
    out = {}
    for key, value in params.items():
        if key == INLINE_CONFIG:
            out.update(_flatten(yaml.safe_load(value)))
        else:
            out[key] = value
    return out


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def assert_lands(key: str, actual: Any, expected: Any) -> None:
    if isinstance(actual, (bool, int, float, str)):
        if isinstance(expected, float):  # t_init lives in a float32 parameter
            assert math.isclose(actual, expected, rel_tol=1e-6), f"{key}: built {actual!r}, swept {expected!r}"
        else:
            assert actual == expected and type(actual) is type(expected), f"{key}: built {actual!r}, swept {expected!r}"
        return
    # A class-typed setting: the value is a class path or {"class_path": ..., "init_args": {...}} (JSON/YAML).
    spec = yaml.safe_load(expected) if isinstance(expected, str) else expected
    spec = {"class_path": spec} if isinstance(spec, str) else spec
    assert type(actual) is _import(spec["class_path"]), f"{key}: built {type(actual)}, swept {spec['class_path']}"
    for arg, value in (spec.get("init_args") or {}).items():
        assert getattr(actual, arg) == value, f"{key}.init_args.{arg}: built {getattr(actual, arg)!r}, swept {value!r}"


def _as_agent(monkeypatch) -> None:
    """The agent starts ``cli.py`` in its own working directory, the repository root (config paths are relative);
    the CLI gets its arguments from ``args=``, so pytest's own argv must not look like CLI arguments."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["cli.py"])


# ------------------------------------------------------------------------------------------------------ tests
def test_sweep_folder_has_the_tiny_object_sweeps():
    assert {"srtod_threshold.yaml", "assigner_similarity.yaml", "tiles.yaml", "optimizer.yaml"} <= set(SWEEPS)


def test_logged_metric_names():
    names = logged_metric_names()
    assert {"val/AP", "val/AP50", "val/AP75", "val/AP_vt", "val/AP_t", "val/AP_s", "val/AP_m", "val/AR"} <= names


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_is_a_valid_wandb_sweep(name):
    sweep = _load(name)
    assert REQUIRED_KEYS <= set(sweep), f"missing {REQUIRED_KEYS - set(sweep)}"
    assert set(sweep) <= SWEEP_KEYS, f"not W&B sweep keys: {set(sweep) - SWEEP_KEYS}"
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] == "maximize"
    assert sweep["metric"]["name"] in logged_metric_names(), "the metric must be a key the task logs"
    assert (ROOT / sweep["program"]).is_file()

    assert sweep["parameters"], "nothing swept"
    for key, spec in sweep["parameters"].items():
        assert "parameters" not in spec, f"{key}: use flat dotted keys; a nested block arrives as one dict argument"
        assert spec.keys() & {"value", "values", "min"}, f"{key}: unsupported parameter form {spec}"
        dist = spec.get("distribution")
        assert dist not in LOG_SPACE_DISTRIBUTIONS, f"{key}: use log_uniform_values (min/max are values, not logs)"
        if "min" in spec:
            assert dist is None or dist in RANGE_DISTRIBUTIONS, f"{key}: unsupported distribution {dist}"
            assert 0 < spec["min"] < spec["max"] if "log" in (dist or "") else spec["min"] < spec["max"]
            assert sweep["method"] != "grid", f"{key}: grid search needs discrete values"
        for value in spec["values"] if "values" in spec else [spec["value"]] if "value" in spec else []:
            # W&B writes None as `--key=None`, which jsonargparse reads as the string "None": write "null".
            assert value is not None, f'{key}: write the string "null", not null'
        if key == INLINE_CONFIG:
            assert all(isinstance(v, str) and isinstance(yaml.safe_load(v), dict) for v in spec["values"])

    # LightningCLI parses overrides only after the subcommand and the config files (Lightning#16836,
    # jsonargparse#462), and later arguments win: fit, then every --config, then ${args}, which comes last.
    command = [str(c) for c in sweep["command"]]
    assert command.count("${args}") == 1 and command[-1] == "${args}", "${args} last, once"
    assert not [c for c in command if c.startswith("${args") and c != "${args}"], "LightningCLI reads --key=value"
    assert command.index("${program}") < command.index("fit")
    configs = [command[i + 1] for i, c in enumerate(command) if c in ("--config", "-c")]
    assert configs and all(command.index(c) > command.index("fit") for c in configs)
    assert all((ROOT / c).is_file() for c in configs), configs


@pytest.mark.parametrize("name", SWEEPS)
def test_agent_command_parses_through_fit(name, tmp_path, monkeypatch, capsys):
    """The agent's exact argv, ``fit`` included, passes the real parser (``--print_config`` stops before training)."""
    _as_agent(monkeypatch)
    sweep = _load(name)
    args = cli_args(sweep, draws(sweep["parameters"])[0])
    assert args[0] == "fit"
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err[-2000:]
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["logger"]["init_args"]["name"] is None, "W&B names the runs of a sweep"


@pytest.mark.parametrize("name", SWEEPS)
def test_swept_values_reach_the_built_objects(name, tmp_path, monkeypatch):
    _as_agent(monkeypatch)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # restored after the test; LightningCLI sets it
    sweep = _load(name)
    for params in draws(sweep["parameters"]):
        args = cli_args(sweep, params)
        assert args[0] == "fit"
        # run=False builds model, data and trainer without subcommands; the tiny data settings come after the
        # swept ones and touch none of them.
        cli = cli_main([*args[1:], *tiny_data_args(tmp_path), *quiet_trainer_args(tmp_path)], run=False)
        for key, expected in expected_settings(params).items():
            if key not in PROBES:
                pytest.fail(f"no probe for swept setting {key!r}: add one to PROBES in {Path(__file__).name}")
            assert_lands(key, PROBES[key](cli), expected)
        # Tiles are trained and evaluated at one size (the detector sees objects at its training scale).
        if cli.datamodule.train_tiling is not None and cli.model.inference is not None:
            assert cli.datamodule.train_tiling.tile_size == cli.model.inference.tile_size


def test_tile_pairs_move_together():
    """Each value of the tiles sweep sets the same tile size and overlap for training and sliced inference."""
    pairs = []
    for value in _load("tiles.yaml")["parameters"][INLINE_CONFIG]["values"]:
        settings = _flatten(yaml.safe_load(value))
        train = (settings["data.train_tiling.init_args.tile_size"], settings["data.train_tiling.init_args.overlap"])
        infer = (settings["model.inference.init_args.tile_size"], settings["model.inference.init_args.overlap"])
        assert train == infer
        pairs.append(train)
    assert pairs == [(192, 64), (256, 32), (256, 64), (384, 64), (512, 96)]


def test_wandb_default_command_and_args_before_fit_are_rejected(monkeypatch, capsys):
    """Why the sweep files spell out the command: W&B's default ``${env} ${interpreter} ${program} ${args}`` has
    no subcommand, and overrides placed before ``fit`` are not parsed (jsonargparse#462)."""
    _as_agent(monkeypatch)
    sweep = {"program": "cli.py", "command": None}
    params = {"model.optimizer.init_args.lr": 0.001}
    default = cli_args(sweep, params)
    assert default == ["--model.optimizer.init_args.lr=0.001"]
    swapped = cli_args(dict(sweep, command=["${env}", "${interpreter}", "${program}", "${args}", "fit"]), params)
    for args in (default, [*swapped, "--config", "configs/quickstart.yaml"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*args, "--print_config"])
        assert exit_info.value.code != 0
    capsys.readouterr()


def test_wandb_formats_values_as_the_cli_reads_them():
    """The formatting the sweep files rely on (wandb 0.31): ``--key=str(value)``; None becomes "None"."""
    formatted = create_sweep_command_args(
        {"args": {"a": {"value": 0.5}, "b": {"value": [1, 2]}, "c": {"value": True}, "d": {"value": None}}}
    )["args"]
    assert formatted == ["--a=0.5", "--b=[1, 2]", "--c=True", "--d=None"]
