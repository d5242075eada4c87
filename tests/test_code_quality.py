"""Lint, formatting and types run with the tests, so that a regression fails the README's test command.

The rules live in pyproject.toml (``[tool.ruff]``, ``[tool.mypy]``); ``.pre-commit-config.yaml`` runs the same tools
before a commit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_PATHS = ["lit_finetune", "tests", "benchmarks", "cli.py"]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _ruff() -> str:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: `pip install -e .[dev]` installs it.")
    return found


def test_ruff_check_finds_nothing() -> None:
    result = _run(_ruff(), "check", *PYTHON_PATHS)
    assert result.returncode == 0, f"`ruff check` found problems (fix them, or `ruff check --fix`):\n{result.stdout}{result.stderr}"


def test_code_is_formatted() -> None:
    result = _run(_ruff(), "format", "--check", *PYTHON_PATHS)
    assert result.returncode == 0, f"`ruff format` would change these files (run `ruff format`):\n{result.stdout}{result.stderr}"


def test_mypy_passes_on_the_package() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, f"mypy found type errors:\n{result.stdout[-6000:]}{result.stderr[-2000:]}"
