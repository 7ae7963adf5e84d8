"""The layout is the architecture: commands on top, what they share below, the domain at the
bottom. Checked by import-linter (contracts in pyproject.toml) and a few direct looks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from hydra.utils import get_method

import mtcsnn
from mtcsnn.losses import PairLoss
from mtcsnn.run.checkpoint import SAFE_TARGETS
from mtcsnn.run.config import CONFIG_PATH

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(mtcsnn.__file__).parent
COMMANDS = ("train", "eval", "predict", "explain", "export", "report", "bench")


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts on the package found under ``src``."""
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
        + ["--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd=src,
        timeout=300,
    )


def test_the_import_contracts_hold():
    result = lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


WRONG_IMPORTS = {
    # module: (an import it must not have, the contract that says so)
    "explain.py": ("from mtcsnn.predict import main", "Commands on top"),
    "models/lit_module.py": ("from mtcsnn.data.pairing import PairSampler", "know nothing"),
    "losses/base.py": ("from mtcsnn.run import files", "free of Hydra"),
    "grading/metrics.py": ("import omegaconf", "free of Hydra"),
}


def test_the_contracts_catch_wrong_imports(tmp_path):
    """The check can fail: wrong imports in a copy of the package break every contract."""
    shutil.copytree(PACKAGE, tmp_path / "mtcsnn", ignore=shutil.ignore_patterns("__pycache__"))
    for module, (line, _) in WRONG_IMPORTS.items():
        path = tmp_path / "mtcsnn" / module
        head, sep, rest = path.read_text().partition("from __future__ import annotations\n")
        path.write_text(head + sep + line + "  # noqa\n" + rest)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    for module, (line, contract) in WRONG_IMPORTS.items():
        assert re.search(rf"{contract}.*BROKEN", result.stdout), result.stdout
        imported = line.split()[1]
        assert (
            f"mtcsnn.{module.removesuffix('.py').replace('/', '.')} -> {imported}"
            in (result.stdout)
            or imported in result.stdout
        ), result.stdout


def test_no_import_cycles_inside_the_package():
    graph = grimp.build_graph("mtcsnn")
    modules = sorted(graph.modules)
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("mtcsnn") and imported != module:
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                # a package importing its own submodule (``__init__`` re-exports) is no cycle
                if (
                    chain
                    and not imported.startswith(module + ".")
                    and not (module.startswith(imported + "."))
                ):
                    pytest.fail(f"import cycle: {module} -> {' -> '.join(chain)}")


def test_at_most_ten_modules_at_the_top_and_every_command_runs_as_a_module():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    for command in COMMANDS:
        assert command in top
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(get_method(f"{module}.{function}")), name


def test_no_loss_is_probed_for_what_it_can_do():
    """The loss interface is declared (PairLoss), so nothing asks a loss what it has."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "hasattr(" not in text, path
        assert not re.search(r"getattr\([^)]*loss", text), path


def test_every_configured_loss_is_a_pair_loss():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        for yaml in sorted((Path(CONFIG_PATH) / "loss").glob("*.yaml")):
            cfg = compose("train", overrides=[f"loss={yaml.stem}", "data=synthetic"])
            assert isinstance(instantiate(cfg.loss), PairLoss), yaml.name
    GlobalHydra.instance().clear()


def test_targets_saved_in_checkpoints_still_resolve():
    """Checkpoints name the package-level classes (``mtcsnn.models.MTCSNNModule`` ...)."""
    for target in sorted(SAFE_TARGETS):
        assert callable(get_method(target)), target


def test_every_config_folder_ships_in_the_package():
    """A new conf/ group folder must be listed in pyproject's packages, or the wheel lacks it."""
    import tomllib

    packages = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    conf = ROOT / "conf"
    folders = {conf, *(p for p in conf.rglob("*") if p.is_dir())}
    wanted = {
        ".".join(["mtcsnn", "conf", *p.relative_to(conf).parts])
        for p in folders
        if any(p.glob("*.yaml"))
    }
    assert wanted - packages == set()


def test_the_domain_imports_without_hydra_or_omegaconf():
    """``import mtcsnn`` (its root ``__init__``, which the contracts cannot see apart from the
    package) and the domain load neither Hydra nor OmegaConf: checked in a fresh interpreter."""
    code = (
        "import sys, mtcsnn, mtcsnn.losses, mtcsnn.models, mtcsnn.grading, mtcsnn.data\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_a_config_composed_with_only_the_config_module_imported_resolves():
    """The resolvers (``${metric_mode:...}``) come with :data:`CONFIG_PATH`, not with
    ``import mtcsnn``."""
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from mtcsnn.run.config import CONFIG_PATH\n"
        "with initialize_config_dir(config_dir=CONFIG_PATH, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['data=synthetic', 'optimized_metric=val/loss'])\n"
        "print(cfg.callbacks.model_checkpoint.mode)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "min", result.stdout


def test_every_python_package_ships_in_the_wheel():
    """A new package under ``src/mtcsnn`` must be listed in pyproject's packages, or the
    wheel lacks it."""
    packages = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(["mtcsnn", *p.parent.relative_to(PACKAGE).parts])
        for p in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found - packages == set()


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
