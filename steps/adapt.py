"""Adaptation step: fine-tune a model version's shipped model on a new lab's labelled cells
(``bloodcell.adaptation``); the result is the new version's shipped model."""

from __future__ import annotations

from typing import Annotated, Any

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell import MODEL_ARTIFACT
from bloodcell.adaptation import AdaptConfig, adapt_model
from bloodcell.dataset import Dataset
from bloodcell.predict import model_classes
from materializers.keras_materializer import KerasModelMaterializer
from steps._cache import content_cache_policy
from steps._model import log_to_model

logger = get_logger(__name__)


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={MODEL_ARTIFACT: KerasModelMaterializer},
)
def adapt(base: keras.Model, lab: Dataset, replay: Dataset,
          adaptation: dict[str, Any] | None = None) -> Annotated[keras.Model, MODEL_ARTIFACT]:
    """``base`` (a shipped model) adapted to ``lab`` (the new lab's labelled cells; any subset of
    its classes), ``replay`` (the base version's training data) mixed in so it keeps every class;
    ``adaptation``: options of ``bloodcell.adaptation.AdaptConfig``."""
    cfg = AdaptConfig.from_dict(adaptation)
    model, info = adapt_model(base, lab, replay, cfg)
    logger.info("Adapted to %d cells of %s (%d replayed) in %d epochs, final loss %.4f", info["lab_cells"],
                info["lab_classes"], info["replayed"], info["epochs"], info["final_loss"])
    log_metadata(info)
    log_to_model({"adapted": True, "class_names": model_classes(model), "image_size": int(model.input_shape[1]),
                  "lab_fingerprint": lab.fingerprint, "lab_samples": len(lab), "lab_source": str(lab.info.get("source", "")),
                  "replay_fingerprint": replay.fingerprint})
    return model
