"""The cache policy every cached step uses: its key covers the step's whole import closure.

ZenML keys a step's cache on the step function's own code, its parameters and its inputs; code in
other modules counts only through ``CachePolicy.source_dependencies``. A hand-kept list of those
modules goes stale as imports change, and a module missing from it serves a stale model from the
cache. So the list is computed here: every project module (``bloodcell``, ``steps``,
``materializers``) that the step's module imports, directly or through other project modules,
including imports inside functions and the packages' ``__init__`` files, found by reading the
sources (``ast``), not by running them.

Two more things go into the key: inputs by content, not by artifact id (the materializers give
content hashes), so an unchanged dataset re-read by ``ingest`` still hits the cache downstream;
and the expectation suites (a file every guarded step reads).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

from zenml.config import CachePolicy
from zenml.config.source import Source, SourceType

PROJECT_PACKAGES = ("bloodcell", "steps", "materializers")


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of module ``name`` under ``root``, or None if ``name`` is not a module
    there (an attribute imported with ``from x import name``, say)."""
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name an ``import`` anywhere in the file may refer to: ``import a.b`` gives
    ``a.b``; ``from a.b import c`` gives ``a.b`` and ``a.b.c`` (a submodule, if it is one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_closure(
    module: str, root: str | Path, packages: tuple[str, ...] = PROJECT_PACKAGES
) -> list[str]:
    """The project modules ``module`` (itself included) needs, with every parent package, sorted:
    its imports, theirs, and so on, as long as they are modules of ``packages`` under ``root``."""
    root = Path(root)
    seen: set[str] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in packages:
            continue
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            name = ".".join(parts[:i])
            if name in seen:
                continue
            path = _module_file(name, root)
            if path is None:
                break
            seen.add(name)
            todo.extend(_imported_names(path, name))
    return sorted(seen)


def source_root_of(module: str) -> Path:
    """The folder that holds ``module``'s top-level package (``module`` is imported, or being
    imported)."""
    file = Path(sys.modules[module].__file__).resolve()
    depth = len(module.split("."))  # root/a/b.py is a.b; root/a/b/__init__.py is a.b too
    return file.parents[depth if file.name == "__init__.py" else depth - 1]


def content_cache_policy(step_module: str) -> CachePolicy:
    """The cache policy of a step defined in ``step_module`` (pass ``__name__``): its import
    closure as source dependencies, inputs by content, the expectation suites as a file."""
    from steps._guard import SUITES

    closure = import_closure(step_module, source_root_of(step_module))
    # ZenML loads each dependency by its import path when it computes the key (``a.b`` as the
    # attribute ``b`` of ``a``): a module imported only inside a function is not an attribute of
    # its package yet, so import every one now
    for name in closure:
        if name not in sys.modules:
            importlib.import_module(name)
    return CachePolicy(
        include_artifact_ids=False,
        file_dependencies=[SUITES],
        source_dependencies=[Source(module=name, type=SourceType.USER) for name in closure],
    )
