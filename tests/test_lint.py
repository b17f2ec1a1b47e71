"""Lint as a test: `ruff check` passes on the repository with the pinned ruff, pre-commit runs that same version, and
a house rule ruff does not check (test modules share helpers through conftest.py and helpers.py, never by importing
one another)."""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def ruff_pin() -> str:
    """The ruff version pyproject.toml's dev extra pins."""
    pins = re.findall(r'"ruff==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert len(pins) == 1, pins
    return pins[0]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (pip install -e '.[dev]' or bash scripts/setup.sh installs it)")
def test_ruff_check_is_clean():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_pre_commit_runs_the_pinned_ruff():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (repo,) = [r for r in config["repos"] if r["repo"].endswith("astral-sh/ruff-pre-commit")]
    assert repo["rev"] == f"v{ruff_pin()}"
    assert [(h["id"], h.get("args")) for h in repo["hooks"]] == [("ruff-check", ["--fix"])]


def test_no_test_module_imports_another():
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[-1].startswith("test_") or n.startswith("tests.test_")]
    assert not found, "move shared helpers to conftest.py (fixtures) or helpers.py:\n" + "\n".join(found)
