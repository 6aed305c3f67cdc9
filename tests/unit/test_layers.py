"""The floors of aggregator/ are a checked contract: import-linter, as declared in pyproject.toml.

No sockets: lint-imports reads the source. The two tests on a copy of the package prove the
check has teeth: an upward import and an import cycle each make it fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if command is None:
        pytest.fail("lint-imports is missing: pip install -r requirements-dev.txt")
    return subprocess.run([command, "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root,
                          capture_output=True, text=True, check=False, timeout=120)


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "aggregator", tmp_path / "aggregator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_its_layer_contracts() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    names = root / "aggregator" / "base" / "names.py"
    names.write_text(names.read_text() + "\nfrom aggregator.archive import writer as _upward  # noqa\n")
    done = lint_imports(root)
    assert done.returncode != 0
    assert "aggregator.base.names -> aggregator.archive.writer" in done.stdout, done.stdout


def test_an_import_between_siblings_breaks_the_contract(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    secret = root / "aggregator" / "delivery" / "secret.py"
    secret.write_text(secret.read_text() + "\nfrom aggregator.claims import store as _sideways  # noqa\n")
    done = lint_imports(root)
    assert done.returncode != 0
    assert "aggregator.delivery.secret -> aggregator.claims.store" in done.stdout, done.stdout


def test_an_import_cycle_breaks_the_contract(tmp_path: Path) -> None:
    root = copy_of_the_package(tmp_path)
    archive = root / "aggregator" / "archive"
    (archive / "cycle_a.py").write_text("from aggregator.archive import cycle_b  # noqa\n")
    (archive / "cycle_b.py").write_text("from aggregator.archive import cycle_a  # noqa\n")
    done = lint_imports(root)
    assert done.returncode != 0
    assert "No import cycles" in done.stdout and "BROKEN" in done.stdout, done.stdout
