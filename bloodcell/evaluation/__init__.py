"""Judging a model: plain, noisy and corrupted test sets, other labs, reliability, plots and the
promotion rule. Imports ``bloodcell.data``, ``bloodcell.augment`` and ``bloodcell.model``."""


def __getattr__(name: str):
    # artifacts written before the subpackages name ``bloodcell.evaluation.EvaluationReport``
    if name == "EvaluationReport":
        from bloodcell.evaluation.report import EvaluationReport

        return EvaluationReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
