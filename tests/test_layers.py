"""The package's dependency direction (docs: architecture): lower layers never import higher ones, the middle
layer's packages never import each other, and only the edge imports Lightning and W&B."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "tod_lightning"
BOTTOM = {"ops", "structures"}
MIDDLE = {"models", "losses", "data", "metrics"}
# What each layer may import from the package (itself always).
ALLOWED = {
    **{name: BOTTOM for name in BOTTOM},
    "assigners": BOTTOM,
    **{name: BOTTOM | {"assigners"} for name in MIDDLE},
}
LIGHTNING_OK = {"tod_lightning.task", "tod_lightning.callbacks", "tod_lightning.cli", "tod_lightning.data.datamodule"}
WANDB_OK = {"tod_lightning.callbacks"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        yield name, imported


def _layer(module: str) -> str:
    """``tod_lightning.losses.criterion`` -> ``losses``; ``tod_lightning.metrics`` -> ``metrics``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module,imported", list(_modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_dependency_direction(module, imported):
    layer = _layer(module)
    ours = {_layer(m) for m in imported if m.split(".")[0] == "tod_lightning"} - {layer, ""}
    if layer in ALLOWED:
        assert ours <= ALLOWED[layer], f"{module} imports {sorted(ours - ALLOWED[layer])}"
    roots = {m.split(".")[0] for m in imported}
    assert "lightning" not in roots or module in LIGHTNING_OK, f"{module} imports lightning"
    assert "wandb" not in roots or module in WANDB_OK, f"{module} imports wandb"


def test_the_scan_sees_the_layers():
    """A scan that found nothing would pass everything."""
    found = dict(_modules())
    assert {"tod_lightning.losses.criterion", "tod_lightning.ops.nms", "tod_lightning.task"} <= set(found)
    assert "tod_lightning.assigners.atss" in found["tod_lightning.losses.criterion"]
    assert "lightning" in {m.split(".")[0] for m in found["tod_lightning.task"]}
