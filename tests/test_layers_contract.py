"""The import layering of docs/DESIGN.md ("Layout"), checked by import-linter's contracts in
pyproject.toml; a check that the contracts are not vacuous (a copy of the package with one
upward import must fail them); and the size of a module (one idea per file)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    try:
        import importlinter  # noqa: F401
    except ImportError:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'", pytrace=False)
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--config", "pyproject.toml"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    """Also `lint-imports` from the repository root."""
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"Contracts: 3 kept, 0 broken", proc.stdout), proc.stdout[-2000:]


@pytest.mark.parametrize("module,line,contract", [
    ("models/dit.py", "import ecar.methods.registry", "ecar layers"),     # a network knows its method
    ("methods/dit.py", "import ecar.methods.ecar", "methods"),           # one method uses another
    ("engine/single_unit.py", "import ecar.config", "ecar layers"),      # the cycle issue 13 removed
    ("models/heads.py", "import ecar.models.ecar", "models"),            # a shared head knows a network
    ("methods/mar.py", "import ecar.methods.base\nimport ecar.methods.ecar", "methods"),  # a new method too
])
def test_an_upward_import_breaks_the_contracts(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "src" / "ecar", tmp_path / "ecar",
                    ignore=shutil.ignore_patterns("__pycache__", "assets", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "ecar" / module
    before = target.read_text() if target.exists() else '"""A module added later."""\n'
    target.write_text(before + f"\n{line}  # deliberate violation\n")
    proc = _lint(tmp_path, pythonpath=tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    report = proc.stdout
    assert re.search(r"Contracts: \d+ kept, [1-9]\d* broken", report), report[-3000:]
    assert contract in report.split("Broken contracts")[-1], report[-3000:]
    importer = "ecar." + module[:-3].replace("/", ".")
    assert importer in report, report[-3000:]


MAX_LINES = 450
"""Lines a module of the package may have (issue 26: one idea per file; a module past it holds
more than one and is split)."""


def test_no_module_is_longer_than_the_limit():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (ROOT / "src" / "ecar").rglob("*.py")}
    assert len(sizes) > 100
    over = {k: v for k, v in sizes.items() if v > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by idea): {over}"

