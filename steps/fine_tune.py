"""Step 6: fine-tune a transfer-learning model, then package the model handed to ``evaluate``
(float32 compute, prior correction, test-time augmentation: ``bloodcell.model.packaging``).

A transfer model gets its top backbone stages unfrozen (batch norm kept frozen, L2 on the
unfrozen convs) and is fitted again with AdamW 1e-5. The custom CNN has no pretrained backbone and
passes through to the packaging.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.model.build
import bloodcell.model.compute
import bloodcell.model.packaging
import bloodcell.model.referral
import bloodcell.model.training
import bloodcell.model.transfer
from bloodcell import MODEL_ARTIFACT
from bloodcell.data.dataset import Dataset
from bloodcell.data.tables import metrics_tables
from materializers.keras_materializer import KerasModelMaterializer
from steps._cache import content_cache_policy
from steps._checkpoint import backup_slot
from steps._guard import guard

logger = get_logger(__name__)


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={MODEL_ARTIFACT: KerasModelMaterializer},
)
def fine_tune(
    model: keras.Model,
    train: Dataset,
    val: Dataset,
    unfreeze_blocks: int = 2,
    l2: float = 1e-4,
    training: dict[str, Any] | None = None,
    tta: bool = True,
    prior_correction: float = 1.5,
    referral: dict[str, Any] | None = None,
    min_val_accuracy: float = 0.0,
) -> Annotated[keras.Model, MODEL_ARTIFACT]:
    """Fine-tune (transfer models), package the shipped model (calibrated, with the referral rule:
    ``referral`` holds options of ``bloodcell.model.referral.ReferralConfig``), check its val
    accuracy."""
    bloodcell.model.packaging.check_prior_correction(prior_correction)
    referral_cfg = bloodcell.model.referral.ReferralConfig.from_dict(referral)
    info: dict[str, Any] = {}
    if bloodcell.model.transfer.backbone_of(model) is None:
        info.update(skipped=True, reason=f"{model.name} has no pretrained backbone")
    else:
        cfg = bloodcell.model.training.fine_tune_config(training)
        keys = (
            train.fingerprint,
            val.fingerprint,
            bloodcell.model.build.model_fingerprint(model),
            unfreeze_blocks,
            l2,
            training,
        )
        start = time.perf_counter()
        with (
            backup_slot("fine_tune", *keys, folder=cfg.backup_dir) as slot,
            bloodcell.model.compute.compute_scope(cfg.compute_policy, cfg.distribute),
        ):
            cfg.backup_dir = slot.path
            model, history, unfrozen = bloodcell.model.training.fine_tune_model(
                model, train, val, unfreeze_blocks, l2, cfg, slot.callbacks
            )
        info.update(
            skipped=False,
            unfrozen_layers=len(unfrozen),
            epochs=len(history.get("loss", [])),
            wall_seconds=round(time.perf_counter() - start, 1),
            best_val_accuracy=max(history.get("val_accuracy", [0.0])),
        )
        logger.info(
            "Fine-tuned %d layers of the top %d stages for %d epochs",
            len(unfrozen),
            unfreeze_blocks,
            info["epochs"],
        )
    if info.get("skipped"):
        logger.info("fine-tuning skipped: %s", info["reason"])
    packaged, notes = bloodcell.model.packaging.package_model(
        model, train, val, tta=tta, prior_correction=prior_correction, referral=referral_cfg
    )
    info.update(notes)
    if prior_correction:
        logger.info(
            "prior correction %.2f: val accuracy %.4f -> %.4f",
            prior_correction,
            info["val_accuracy_uncorrected"],
            info["val_accuracy"],
        )
    rule = info["referral"]
    logger.info(
        "calibrated with temperature %.3f; referral rule: accept at confidence >= %.4f "
        "and distance <= %.2f "
        "(val: %.1f%% accepted at %s accuracy)",
        rule["temperature"],
        rule["confidence_threshold"],
        rule["review_distance"],
        100 * rule["val"]["coverage"],
        rule["val"]["accuracy_accepted"],
    )
    log_metadata(info)
    guard(
        "fine_tune",  # the model handed on, in inference mode: val accuracy >= min_val_accuracy
        metrics_tables({"val_accuracy": info["val_accuracy"]}),
        min_val_accuracy=min_val_accuracy,
    )
    return packaged
