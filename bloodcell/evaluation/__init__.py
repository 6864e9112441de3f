"""Judging a model: plain, noisy and corrupted test sets, other labs, reliability, plots and the
promotion rule. Imports ``bloodcell.data``, ``bloodcell.augment`` and ``bloodcell.model``."""


def __getattr__(name: str):
    # Artifacts written before the subpackages name ``bloodcell.evaluation.EvaluationReport``.
    # Imported by name, not by an import statement: steps/_cache.py reads import statements, and
    # every step that touches this package (plots) would otherwise have report.py and the whole
    # model package in its cache key.
    if name == "EvaluationReport":
        import importlib

        return importlib.import_module("bloodcell.evaluation.report").EvaluationReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
