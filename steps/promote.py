"""Step 8: promote this run's model version to ``production`` if it passed the quality gate and
beats the current production version on this run's test split. Never cached: the answer depends
on which version is in production now."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import get_step_context, log_metadata, step
from zenml.client import Client
from zenml.enums import ModelStages
from zenml.logger import get_logger

import bloodcell.evaluation.report
from bloodcell import MODEL_ARTIFACT
from bloodcell.data.dataset import Dataset
from bloodcell.evaluation.promotion import decide
from bloodcell.evaluation.report import EvaluationReport
from bloodcell.mlops.registry import model_artifact
from bloodcell.model.predict import model_classes

logger = get_logger(__name__)


@step(enable_cache=False)
def promote(
    evaluation: EvaluationReport,
    test: Dataset,
    metric: str = "plain_accuracy",
    min_improvement: float = 0.0,
) -> Annotated[dict[str, Any], "promotion"]:
    """Compare with production on the same test images; set the stage; record the decision and
    both figures on the step and on the model version."""
    current = get_step_context().model
    new_value = evaluation.summary()[metric]
    try:
        production = Client().get_model_version(current.name, ModelStages.PRODUCTION)
    except KeyError:
        production = None
    prod_value, prod_version, other_classes = None, None, None
    if production is not None and production.id == current.id:
        production = None  # this version is production already (a rerun): compare with nothing
    if production is not None:
        prod_version = str(production.number)
        artifact = model_artifact(production)
        if artifact is None:
            logger.warning(
                "production version %s has no %s artifact; treating it as absent",
                prod_version,
                MODEL_ARTIFACT,
            )
        else:
            prod_model = artifact.load()
            prod_classes = model_classes(prod_model)
            if prod_classes != evaluation.class_names:
                other_classes = prod_classes
            else:
                report = bloodcell.evaluation.report.evaluate_model(
                    prod_model,
                    test,
                    noise_sigma=evaluation.params.get("noise_sigma", 25.0),
                    seed=evaluation.params.get("noise_seed", 0),
                    corruption_samples=None,
                )
                prod_value = report.summary()[metric]
    decision = decide(
        new_value,
        evaluation.params.get("quality_gate", "passed") == "passed",
        prod_value,
        prod_version,
        metric,
        min_improvement,
        production_classes=other_classes,
        classes=evaluation.class_names,
    )
    if decision.promoted:
        current.set_stage(ModelStages.PRODUCTION, force=True)
    logger.info(
        "%s version %s %s: %s",
        current.name,
        current.number,
        "promoted to production" if decision.promoted else "not promoted",
        decision.reason,
    )
    record = {f"promotion_{k}": ("" if v is None else v) for k, v in decision.to_dict().items()}
    log_metadata(record)
    log_metadata(record, infer_model=True)
    return decision.to_dict()
