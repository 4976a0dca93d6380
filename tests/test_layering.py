"""Import layering (docs/ARCHITECTURE.md, "Layers"): no library package imports a package above it.

An AST walk over every import statement of every module, deferred imports inside functions included,
so a "local import to avoid a cycle" cannot hide an upward dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (besides itself). Mirrors docs/ARCHITECTURE.md.
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "data": {"utils"},
    "model": {"utils"},
    "optim": {"utils"},
    "evaluation": {"utils", "data", "model"},
    "training": {"utils", "data", "model", "optim"},
    "tasks": {"utils", "data", "model", "optim", "evaluation", "training"},
}
#: top-level entry scripts and scripts/: may import any library package, never each other's internals
ENTRY_MODULES = {"pretrain", "train_itm", "train_vqa", "inf_itm", "inf_vqa", "prepro", "train", "evaluate"}


def imported_roots(path: Path) -> set[str]:
    """First components of every absolute module name ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def violations(package: str, root: Path = REPO_ROOT) -> list[str]:
    """``file: imports X`` for every import of a project package ``package`` may not use."""
    project = set(ALLOWED) | ENTRY_MODULES | {"scripts", "tests"}
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for name in sorted(imported_roots(path) & project - ALLOWED[package] - {package}):
            out.append(f"{path.relative_to(root)}: imports {name}")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package):
    assert violations(package) == []


def test_every_library_package_is_layered():
    """A new top-level package must be given its place in the layering (here and in the docs)."""
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")}
    assert packages - {"tests"} <= set(ALLOWED), f"unlayered packages: {packages - set(ALLOWED)}"
    doc = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert all(f"`{name}/`" in doc for name in ALLOWED)


def test_the_check_sees_deferred_imports(tmp_path):
    """The walk catches an upward import hidden inside a function (the pattern it exists to forbid)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "m.py").write_text("def f():\n    from training.trainer import Trainer\n    return Trainer\n")
    assert violations("model", tmp_path) == ["model/m.py: imports training"]
