"""Step 6: fine-tune a transfer-learning model; a custom CNN passes through unchanged."""

from __future__ import annotations

from typing import Annotated

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell.dataset import Dataset
from materializers import KerasModelMaterializer
from steps._cache import content_cache_policy

logger = get_logger(__name__)


@step(cache_policy=content_cache_policy(), output_materializers={"tuned_model": KerasModelMaterializer})
def fine_tune(model: keras.Model, train: Dataset, val: Dataset, enabled: bool = True) -> Annotated[keras.Model, "tuned_model"]:
    """Fine-tuning needs a pretrained backbone; the custom CNN has none, so it is skipped."""
    reason = "custom CNN has no pretrained backbone" if model.name == "custom_cnn" else "not implemented yet"
    if not enabled:
        reason = "disabled in config"
    logger.info("fine_tune skipped: %s", reason)
    log_metadata({"skipped": True, "reason": reason})
    return model
