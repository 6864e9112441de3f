"""Inference step 2: classify the images with the model version the pipeline is configured with
(``model: {name: ..., version: production}``), keep the table as an artifact and write a CSV."""

from __future__ import annotations

import os
from typing import Annotated

import pandas as pd
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from bloodcell import MODEL_ARTIFACT
from bloodcell.data.dataset import Dataset
from bloodcell.data.tables import metrics_tables
from bloodcell.mlops.registry import model_artifact
from bloodcell.model.predict import MAX_UNLIKE_SHARE, predict_table, unlike_share, unlike_warning
from steps._guard import guard

logger = get_logger(__name__)


@step(enable_cache=False)
def predict(
    images: Dataset,
    output: str | None = "predictions.csv",
    max_unlike_share: float = MAX_UNLIKE_SHARE,
) -> Annotated[pd.DataFrame, "predictions"]:
    """``id, predicted_class, confidence, status, reason, check, distance, p_<class>...`` for
    every image; also written to ``output`` (relative to the working directory; null: no file).
    An odd image gets its status; the run goes on. Above ``max_unlike_share`` of the images
    unlike the training cells, the ``predict`` expectation warns (it does not stop the run)."""
    version = get_step_context().model
    artifact = model_artifact(version)
    if artifact is None:
        raise RuntimeError(
            f"model {version.name} version {version.version} has no {MODEL_ARTIFACT!r} artifact: "
            "is it a version made by the training pipeline?"
        )
    model = artifact.load()
    table = predict_table(model, images.images, images.ids)
    if output:
        tmp = f"{output}.partial"
        table.to_csv(tmp, index=False)
        os.replace(tmp, output)  # never a half-written CSV
        logger.info("Wrote %d predictions to %s", len(table), os.path.abspath(output))
    counts = table.predicted_class.value_counts().to_dict()
    statuses = {k: int(v) for k, v in table.status.value_counts().items()}
    share = unlike_share(table)
    log_metadata(
        {
            "model_name": version.name,
            "model_version": str(version.number),
            "predicted": len(table),
            "predicted_per_class": {k: int(v) for k, v in counts.items()},
            "status_counts": statuses,
            "unlike_training_share": share,
            "output": os.path.abspath(output) if output else "",
        }
    )
    logger.info("status: %s", ", ".join(f"{k} {v}" for k, v in statuses.items()))
    gate = guard(
        "predict",  # warns when unlike_training_share > max_unlike_share; never raises
        metrics_tables({"unlike_training_share": share}),
        raise_on_failure=False,
        max_unlike_share=max_unlike_share,
    )
    if not gate.success:
        logger.warning(unlike_warning(share))
    return table
