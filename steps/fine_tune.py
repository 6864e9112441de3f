"""Step 6: fine-tune a transfer-learning model; a custom CNN passes through unchanged."""

from __future__ import annotations

from typing import Annotated

import keras
import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.evaluation
from bloodcell.dataset import Dataset
from bloodcell.tables import metrics_tables
from materializers import KerasModelMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard

logger = get_logger(__name__)


@step(cache_policy=content_cache_policy(bloodcell.evaluation), output_materializers={"tuned_model": KerasModelMaterializer})
def fine_tune(
    model: keras.Model, train: Dataset, val: Dataset, enabled: bool = True, min_val_accuracy: float = 0.0,
) -> Annotated[keras.Model, "tuned_model"]:
    """Fine-tuning needs a pretrained backbone; the custom CNN has none, so it is skipped.

    Either way the model handed on is checked: its inference-mode val accuracy must reach the floor."""
    reason = "custom CNN has no pretrained backbone" if model.name == "custom_cnn" else "not implemented yet"
    if not enabled:
        reason = "disabled in config"
    logger.info("fine_tune skipped: %s", reason)
    val_accuracy = float(np.mean(bloodcell.evaluation.predict_classes(model, val.images) == val.labels))
    log_metadata({"skipped": True, "reason": reason, "val_accuracy": val_accuracy})
    guard("fine_tune", metrics_tables({"val_accuracy": val_accuracy}), min_val_accuracy=min_val_accuracy)
    return model
