"""The layout's import rules (pyproject.toml, [tool.importlinter]) hold: import-linter reads every import of
pipeline/ and steps/, lazy ones included, and checks each contract."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_import_rule_of_the_layout_holds():
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 6 kept, 0 broken." in done.stdout, done.stdout


def test_a_broken_rule_is_caught(tmp_path):
    """The check can fail: a step importing pipeline/ is reported (on a copy of the tree)."""
    import shutil

    for package in ("allpairs", "pipeline", "steps"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "steps" / "merge.py").write_text((REPO / "steps" / "merge.py").read_text() + "\nimport pipeline.api\n")
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert done.returncode != 0 and "steps.merge -> pipeline.api" in done.stdout, done.stdout
