"""README's configuration reference and command table agree with what the command line prints and accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_finetune.cli import main

ROOT = Path(__file__).resolve().parents[2]
CLI = shutil.which("lit-finetune", path=str(Path(sys.executable).parent)) or "lit-finetune"
README = (ROOT / "README.md").read_text()
LINKED = {"num_classes", "class_names", "class_counts", "num_train_samples", "image_mean", "image_std", "backbone", "weights", "task"}
"""Options the command line fills in from the other section (not printed there)."""


def reference_rows(section: str) -> list[tuple[list[str], str]]:
    """``(option names, default cell)`` of each row of README's table under the line ``\\`section:\\``."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"`{section}:`"))
    rows, seen_table = [], False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            names = re.findall(r"`([\w.]+)`", cells[0])
            if names and not set(cells[0]) <= set("-| "):
                rows.append((names, cells[1]))
        elif seen_table:
            break
    return rows


@pytest.fixture(scope="module")
def printed(tmp_path_factory) -> dict:
    """``lit-finetune fit --print_config`` with nothing but the required data folder."""
    cwd = tmp_path_factory.mktemp("print_config")
    done = subprocess.run([CLI, "fit", "--data.root", "my_images", "--print_config"], cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout)


def init_args(config: dict) -> dict:
    """The options of a class section, printed flat or as ``class_path`` + ``init_args``."""
    return config.get("init_args", config) if "class_path" in config else config


@pytest.mark.parametrize("section", ["model", "data"])
def test_reference_defaults_are_the_printed_defaults(printed: dict, section: str) -> None:
    options = init_args(printed[section])
    rows = reference_rows(section)
    assert len(rows) >= 10, f"README's `{section}:` table was not found"
    compared = 0
    for names, default in rows:
        for name in names:
            assert name in options or name in LINKED, f"README documents `{section}.{name}`, which `--print_config` does not have"
        names = [name for name in names if name in options]
        if not names:
            continue
        values = re.findall(r"`([^`]*)`", default)
        if len(values) == 1 and len(names) > 1:
            values = values * len(names)  # one default for all
        if len(values) != len(names):
            assert not values, f"README's default of {names} ({default!r}): give one literal per option, or a phrase"
            continue  # a phrase: "from the data", "required", ...
        for name, value in zip(names, values, strict=False):
            expected = options[name]
            expected = list(expected) if isinstance(expected, tuple) else expected
            if isinstance(expected, dict) and "class_path" in expected:
                expected = expected["class_path"]  # a class given by name: README names the class
            assert yaml.safe_load(value) == expected, f"README: `{section}.{name}` defaults to {value}; `--print_config`: {expected!r}"
            compared += 1
    assert compared >= 8


def test_every_option_is_documented(printed: dict) -> None:
    docs = README + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    undocumented = [
        f"{section}.{name}"
        for section in ("model", "data")
        for name in init_args(printed[section])
        if f"`{name}`" not in docs and f"`{section}.{name}`" not in docs
    ]
    assert not undocumented, f"options missing from README.md and docs/: {undocumented}"


def test_command_table_commands_and_options_exist(printed: dict, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["lit-finetune"])
    table = README[README.index("## Command line") :]
    table = table[: table.index("\n\n", table.index("| Command"))]
    commands = sorted(set(re.findall(r"`lit-finetune ([\w-]+)", table)))
    assert {"fit", "validate", "test", "predict", "export", "check-data"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0, command
    capsys.readouterr()
    for option in re.findall(r"`--([\w.]+)", table):
        section, _, name = option.partition(".")
        assert section in printed, f"README's command table names --{option}, which the command line lacks"
        if name and name != "*":
            assert name in init_args(printed[section]), f"--{option}"
