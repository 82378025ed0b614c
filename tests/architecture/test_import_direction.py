"""Dependencies point one way: each package imports only packages of lower layers (or its own).

    1  core
    2  models, datagen
    3  tracking
    4  training, evaluation
    5  registry
    6  orchestration, vos        (entry points: `pipelines/` and `benchmarks/` scripts sit above)

Nothing imports `pipelines`: it holds the stage scripts, not a library. The check reads every
module's import statements (also those inside functions), so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = {
    "core": 1,
    "models": 2,
    "datagen": 2,
    "tracking": 3,
    "training": 4,
    "evaluation": 4,
    "registry": 5,
    "orchestration": 6,
    "vos": 6,
}
SCRIPTS = ("pipelines", "benchmarks")


def imported_packages(path: Path) -> set[str]:
    """The top-level project packages `path` imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & (set(LAYERS) | set(SCRIPTS))


def violations(package: str, root: Path = REPO) -> list[str]:
    layer = LAYERS[package]
    problems = []
    for path in sorted((root / package).rglob("*.py")):
        for imported in sorted(imported_packages(path)):
            if imported in SCRIPTS:
                problems.append(f"{path.relative_to(root)} imports {imported} (a script folder)")
            elif imported != package and LAYERS[imported] >= layer:
                problems.append(
                    f"{path.relative_to(root)} (layer {layer}) imports {imported} "
                    f"(layer {LAYERS[imported]})"
                )
    return problems


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_imports_only_lower_layers(package):
    assert (REPO / package).is_dir(), f"{package}/ is missing: update LAYERS"
    assert violations(package) == []


def test_every_package_has_a_layer():
    packages = {
        path.parent.name
        for path in REPO.glob("*/__init__.py")
        if path.parent.name not in ("tests", *SCRIPTS)
    }
    assert packages <= set(LAYERS), f"give these packages a layer: {packages - set(LAYERS)}"


def test_the_check_catches_an_upward_import(tmp_path):
    """A lower layer importing a higher one, or anything importing pipelines, is reported."""
    fake = tmp_path / "core"
    fake.mkdir()
    (fake / "bad.py").write_text(
        "import registry.versions\n\ndef f():\n    from pipelines import generate\n"
    )
    found = violations("core", root=tmp_path)
    assert any("imports registry" in line for line in found)
    assert any("imports pipelines" in line for line in found)
