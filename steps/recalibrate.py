"""Adaptation without labels: a model version's shipped model with its batch-norm statistics
recomputed on a new lab's unlabelled cells (``bloodcell.model.adaptation.recalibrated_on``); the
result is the new version's shipped model."""

from __future__ import annotations

from typing import Annotated

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell import MODEL_ARTIFACT
from bloodcell.data.dataset import Dataset
from bloodcell.model.adaptation import recalibrated_on
from bloodcell.model.predict import model_classes
from bloodcell.model.referral import fit_referral, options_of
from materializers.keras_materializer import KerasModelMaterializer
from steps._cache import content_cache_policy
from steps._metadata import log_to_model

logger = get_logger(__name__)


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={MODEL_ARTIFACT: KerasModelMaterializer},
)
def recalibrate(
    base: keras.Model, images: Dataset, replay: Dataset, val: Dataset
) -> Annotated[keras.Model, MODEL_ARTIFACT]:
    """``base`` (a shipped model) with batch norm from ``images`` (the new lab's cells, no labels);
    its calibration and referral rule refitted (the base rule's options) on ``replay``'s originals
    and ``val`` (the base version's training data and val split: the only labelled cells here)."""
    model = recalibrated_on(base, images)
    options = options_of(base)
    model, rule = fit_referral(model, replay.originals(), val, options)
    log_metadata({"referral": rule})
    logger.info(
        "Batch norm recomputed on %d unlabelled cells of %s",
        len(images),
        images.info.get("source", "the lab"),
    )
    log_metadata({"lab_cells": len(images), "adaptation": "batch norm from unlabelled cells"})
    log_to_model(
        {
            "adapted": True,
            "adaptation": "batch norm from unlabelled cells",
            "class_names": model_classes(model),
            "image_size": int(model.input_shape[1]),
            "lab_fingerprint": images.fingerprint,
            "lab_samples": len(images),
            "lab_source": str(images.info.get("source", "")),
        }
    )
    return model
