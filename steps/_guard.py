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

SUITES = "configs/expectations.yaml"  # relative to the ZenML source root; in every step's cache key


def guard(
    step: str, tables: dict[str, pd.DataFrame], raise_on_failure: bool = True, **params: Any
) -> ValidationReport:
    """Validate ``tables`` against the step's suite; save the report as ``<step>_expectations``."""
    suites = load_suites(os.path.join(source_utils.get_source_root(), SUITES))
    report = validate(step, tables, suites.get(step, {}), params)
    save_artifact(report, name=f"{step}_expectations", materializer=ValidationReportMaterializer)
    log_metadata(
        {
            "expectations_passed": len(report.results) - len(report.failures),
            "expectations_failed": len(report.failures),
        }
    )
    logger.info(
        "%s: %d/%d expectations passed",
        step,
        len(report.results) - len(report.failures),
        len(report.results),
    )
    return report.raise_for_failures() if raise_on_failure else report
