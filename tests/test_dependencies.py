"""Every third-party module imported by the package and the benchmarks is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml"}
"""Module names whose distribution is named differently."""


def _imported_modules() -> set[str]:
    names = set()
    for path in [*ROOT.glob("lit_finetune/**/*.py"), *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    local = {"lit_finetune", "__future__", *(path.stem for path in ROOT.glob("benchmarks/*.py"))}  # benchmarks import their helpers
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_every_third_party_import_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    missing = sorted(m for m in _imported_modules() if IMPORT_NAMES.get(m, m).lower().replace("_", "-") not in names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_callbacks_do_not_import_the_data_package():
    """Callbacks sit beside the data: what both need (image reading, palettes) lives in lit_finetune.images."""
    offenders = []
    for path in (ROOT / "lit_finetune" / "callbacks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {m}" for m in modules if m == "lit_finetune.data" or m.startswith("lit_finetune.data.")]
    assert not offenders, offenders
