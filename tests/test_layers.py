"""``bloodcell``'s subpackages follow the pipeline, and imports only run down it: data, augment,
model, evaluation, mlops (ZenML's registry, lineage, schedules), serving; the CLI
(``bloodcell.cli``) sits on top. Read from the source (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "bloodcell"
LAYERS = ["data", "augment", "model", "evaluation", "mlops", "serving"]
# the constants and the options base (bloodcell.options) every layer may import; the CLI, above all
TOP = {"bloodcell", "bloodcell.options", "bloodcell.cli"}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported bloodcell module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found += [(n, id(node) in top) for n in names if n.split(".")[0] == "bloodcell"]
    return found


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in ROOT.rglob("*.py")
    }


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer():
    loose = [m for m in _modules() if m not in TOP and _layer(m) is None]
    assert loose == [], f"modules outside {LAYERS}: {loose}"


def test_imports_never_run_back_up_the_pipeline():
    wrong = []
    for module, path in _modules().items():
        here = _layer(module)
        for imported, _ in _imports(path):
            there = _layer(imported)
            if here is not None and there is not None and there > here:
                wrong.append(f"{module} imports {imported} ({LAYERS[here]} -> {LAYERS[there]})")
    assert wrong == []


def test_module_level_imports_have_no_circle():
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for imported, top in _imports(path):
            if not top:
                continue
            # "bloodcell.data.shards" or "bloodcell.data.dataset.Dataset": the longest known module
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported != module and imported != "bloodcell":
                graph[module].add(imported)
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(n) :], n]))
            if n not in state:
                visit(n, [*trail, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_a_layer_that_imports_upward_is_caught(tmp_path):
    (tmp_path / "x.py").write_text(
        "import bloodcell.serving.model\n\ndef f():\n    from bloodcell.data import shards\n"
    )
    found = _imports(tmp_path / "x.py")
    assert found == [("bloodcell.serving.model", True), ("bloodcell.data.shards", False)]
    assert _layer("bloodcell.data.shards") < _layer("bloodcell.serving.model")


def test_types_named_by_their_old_module_paths_still_load():
    """Artifacts written before the subpackages name their types by the old paths; ZenML loads a
    type with ``source_utils.load``."""
    from zenml.utils import source_utils

    from bloodcell.data.dataset import Dataset
    from bloodcell.data.outliers import OutlierReport
    from bloodcell.data.validation import ValidationReport
    from bloodcell.evaluation.report import EvaluationReport
    from bloodcell.model.history import TrainingHistory
    from bloodcell.model.packaging import with_tta

    old = {
        "bloodcell.dataset.Dataset": Dataset,
        "bloodcell.outliers.OutlierReport": OutlierReport,
        "bloodcell.validation.ValidationReport": ValidationReport,
        "bloodcell.evaluation.EvaluationReport": EvaluationReport,
        "bloodcell.history.TrainingHistory": TrainingHistory,
        "bloodcell.packaging.with_tta": with_tta,
    }
    for path, obj in old.items():
        assert source_utils.load(path) is obj, path
    import bloodcell.evaluation

    try:
        bloodcell.evaluation.NoSuchThing  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("an unknown attribute must raise")
