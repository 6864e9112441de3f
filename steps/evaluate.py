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
    ``non_cell_images`` generated non-cell images of each kind (``bloodcell.evaluation.noncells``; 0: none).

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
    for name, m in report.sets.items():
        logger.info(
            "%s test accuracy %.4f, macro-F1 %.4f (n=%d)", name, m.accuracy, m.macro_f1, m.n
        )
    for name, m in report.external.items():
        logger.info(
            "external set %s: accuracy %.4f, balanced accuracy %.4f (n=%d)",
            name,
            m.accuracy,
            m.balanced_accuracy,
            m.n,
        )
    for name, t in report.trust.items():
        logger.info(
            "%s: ECE %.4f -> %.4f calibrated; %.1f%% accepted at %.4f accuracy, %.1f%% review, %.1f%% not a cell",
            name,
            t["ece_before"],
            t["ece_after"],
            100 * t["coverage"],
            t["accuracy_accepted"],
            100 * t["review"],
            100 * t["not_a_cell"],
        )
    if report.non_cells:
        logger.info(
            "generated non-cell images accepted: %.1f%%",
            100 * report.summary()["non_cells_accepted"],
        )
    for r in report.corruptions:
        if r["severity"]:
            logger.info(
                "%s severity %d (%g): accuracy %.4f",
                r["corruption"],
                r["severity"],
                r["setting"],
                r["accuracy"],
            )
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
