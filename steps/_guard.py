"""Run a step's Great Expectations suite, keep the result as an artifact, stop on failure."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
from zenml import log_metadata, save_artifact
from zenml.logger import get_logger
from zenml.utils import source_utils

from bloodcell.data.validation import ValidationReport, load_suites, validate
from materializers.validation_materializer import ValidationReportMaterializer

logger = get_logger(__name__)

# relative to the ZenML source root; in every step's cache key
SUITES = "configs/expectations.yaml"


def guard(
    step: str, tables: dict[str, pd.DataFrame], raise_on_failure: bool = True, **thresholds: Any
) -> ValidationReport:
    """Validate ``tables`` against the suite ``step`` of configs/expectations.yaml; save the report
    as ``<step>_expectations``; log every check as a rule with its threshold (``passed
    metrics.plain_accuracy 0.91 >= 0.3 (min_plain_accuracy)``).

    ``thresholds`` are the values the suite names as ``{param: NAME}`` (``min_plain_accuracy=``,
    ``max_fraction=``, ``image_size=``...). A failure raises :class:`ExpectationFailed` naming the
    table, column, rule and threshold, unless ``raise_on_failure`` is False."""
    suites = load_suites(os.path.join(source_utils.get_source_root(), SUITES))
    report = validate(step, tables, suites.get(step, {}), thresholds)
    save_artifact(report, name=f"{step}_expectations", materializer=ValidationReportMaterializer)
    log_metadata(
        {
            "expectations_passed": len(report.results) - len(report.failures),
            "expectations_failed": len(report.failures),
        }
    )
    logger.info("%s", report.summary())
    return report.raise_for_failures() if raise_on_failure else report
