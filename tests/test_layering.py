"""The layering of docs/ARCHITECTURE.md, checked on every import, including those inside functions:
`scenarios` <- `envs` <- `perception` <- `agents` <- `run.py`. A lower layer never imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("scenarios", "envs", "perception", "agents", "run")  # bottom to top


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name, or None for anything outside the project."""
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def upward_imports(source: str, importer: str) -> list[str]:
    """`module (line N)` for every import in `source` of a layer above `importer`'s."""
    own = layer_of(importer)
    found = []
    for node in ast.walk(ast.parse(source)):  # walks function bodies too
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:  # relative imports stay inside their own package
            continue
        for name in names:
            target = layer_of(name)
            if target is not None and own is not None and target > own:
                found.append(f"{name} (line {node.lineno})")
    return found


def project_modules() -> list[tuple[str, Path]]:
    modules = [("run", ROOT / "run.py")]
    for package in LAYERS[:-1]:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules.append((".".join(path.relative_to(ROOT).with_suffix("").parts), path))
    return modules


def test_every_package_is_checked():
    checked = {module.split(".")[0] for module, _ in project_modules()}
    assert checked == set(LAYERS)
    assert len(project_modules()) > 60


@pytest.mark.parametrize("module, path", project_modules(), ids=lambda value: str(value) if isinstance(value, str) else "")
def test_no_module_imports_a_higher_layer(module: str, path: Path):
    assert upward_imports(path.read_text(), module) == []


def test_the_check_finds_an_upward_import_inside_a_function():
    source = "import numpy\nfrom envs.files import atomic_write\n\ndef f():\n    from perception.training import train\n"
    assert upward_imports(source, "envs.fast.bench") == ["perception.training (line 5)"]
    assert upward_imports("import agents.train\n", "scenarios.loader") == ["agents.train (line 1)"]
    assert upward_imports("from agents import train\n", "run") == []
