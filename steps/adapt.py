"""Adaptation step: fine-tune a model version's shipped model on a new lab's labelled cells
(``bloodcell.model.adaptation``); the result is the new version's shipped model."""

from __future__ import annotations

from typing import Annotated, Any

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell import MODEL_ARTIFACT
from bloodcell.data.dataset import Dataset
from bloodcell.model.adaptation import AdaptConfig, adapt_model, rule_cells
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
def adapt(
    base: keras.Model,
    lab: Dataset,
    replay: Dataset,
    val: Dataset,
    checks: Dataset,
    adaptation: dict[str, Any] | None = None,
) -> Annotated[keras.Model, MODEL_ARTIFACT]:
    """``base`` (a shipped model) adapted to ``lab`` (the new lab's labelled cells; any subset of
    its classes), ``replay`` (the base version's training data) mixed in so it keeps every class;
    ``adaptation``: options of ``bloodcell.model.adaptation.AdaptConfig``. Its calibration and
    referral rule are refitted (the base rule's options): class means on its training cells,
    temperature and thresholds on the lab's labelled ``checks`` (from ``ingest_external``) where
    there are any, else on ``val`` (the base version's)."""
    cfg = AdaptConfig.from_dict(adaptation)
    model, info = adapt_model(base, lab, replay, cfg)
    options = options_of(base)
    fit, calib, where = rule_cells(
        lab, replay, val, checks, model_classes(model), options.fit_samples, cfg.seed
    )
    model, rule = fit_referral(model, fit, calib, options)
    info["referral"] = {**rule, "thresholds_from": where}
    logger.info(
        "Referral rule refitted on %s: temperature %.3f, %.1f%% of them accepted",
        where,
        rule["temperature"],
        100 * rule["val"]["coverage"],
    )
    logger.info(
        "Adapted to %d cells of %s (%d replayed) in %d epochs, final loss %.4f",
        info["lab_cells"],
        info["lab_classes"],
        info["replayed"],
        info["epochs"],
        info["final_loss"],
    )
    log_metadata(info)
    log_to_model(
        {
            "adapted": True,
            "class_names": model_classes(model),
            "image_size": int(model.input_shape[1]),
            "lab_fingerprint": lab.fingerprint,
            "lab_samples": len(lab),
            "lab_source": str(lab.info.get("source", "")),
            "replay_fingerprint": replay.fingerprint,
        }
    )
    return model
