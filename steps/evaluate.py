"""Step 7: metrics on the plain test split and on the same split with white Gaussian noise."""

from __future__ import annotations

from typing import Annotated

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.evaluation.report
from bloodcell.data.dataset import Dataset
from bloodcell.data.tables import metrics_tables
from bloodcell.evaluation.report import EvaluationReport
from materializers.evaluation_materializer import EvaluationReportMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard
from steps._metadata import log_to_model

logger = get_logger(__name__)


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={"evaluation": EvaluationReportMaterializer},
)
def evaluate(
    model: keras.Model,
    test: Dataset,
    external: Dataset,
    noise_sigma: float = 25.0,
    seed: int = 0,
    corruption_samples: int | None = 768,
    non_cell_images: int = 16,
    min_plain_accuracy: float = 0.0,
    min_noisy_accuracy: float = 0.0,
) -> Annotated[EvaluationReport, "evaluation"]:
    """Accuracy, macro-F1, per-class precision/recall and confusion matrices, in inference mode,
    on the plain and white-noise test sets; a corruption table (JPEG, blur, brightness, contrast,
    saturation, pixelation at three severities) on ``corruption_samples`` test images (0: all,
    null: skip); accuracy, balanced accuracy over the classes present, per-class recall and the
    confusion matrix on each of other labs' sets (``external``, from ``ingest_external``). On
    each set, the calibration error before and after calibration, the risk-coverage curve and the
    referral rule's coverage and accuracy among the accepted cells; the rule's answers on
    ``non_cell_images`` generated non-cell images of each kind (``bloodcell.evaluation.noncells``;
    0: none).

    The quality gate (floors in the config) marks a model below it as failing; it does not stop
    the run, so the report of a failing model is still there to look at."""
    report = bloodcell.evaluation.report.evaluate_model(
        model,
        test,
        noise_sigma=noise_sigma,
        seed=seed,
        corruption_samples=corruption_samples,
        external=external,
        non_cells=non_cell_images,
    )
    for line in report.log_lines():
        logger.info(line)
    gate = guard(
        "evaluate",  # quality gate: plain, noisy accuracy >= their floors; marks, never raises
        metrics_tables(report.summary()),
        raise_on_failure=False,
        min_plain_accuracy=min_plain_accuracy,
        min_noisy_accuracy=min_noisy_accuracy,
    )
    report.params["quality_gate"] = "passed" if gate.success else "failed"
    if not gate.success:
        logger.warning("Quality gate FAILED: %s", "; ".join(r.describe() for r in gate.failures))
    recall = {f"external_{name}_recall": m.recall_present for name, m in report.external.items()}
    log_metadata({**report.summary(), **recall, "quality_gate": report.params["quality_gate"]})
    log_to_model(
        {
            **report.summary(),
            **recall,
            "quality_gate": report.params["quality_gate"],
            "test_fingerprint": test.fingerprint,
            "test_samples": len(test),
            "external_fingerprint": external.fingerprint,
            "external_samples": len(external),
        }
    )
    return report
