"""Step 6: fine-tune a transfer-learning model and package the model handed to ``evaluate``.

A transfer model gets its top backbone stages unfrozen (batch norm kept frozen, L2 on the
unfrozen convs) and is fitted again with AdamW 1e-5. The custom CNN has no pretrained backbone and
passes through. Either way, ``prior_correction`` shifts the output logits towards the class
frequencies of the training originals (rebalancing trained the model on equal priors, which makes
it over-predict the small classes): 1 shifts them by log(originals' frequency / rebalanced
frequency), larger values by a multiple of it (``benchmarks/prior_correction.py`` measures which
strength the val split prefers); with ``tta: true`` the result is wrapped so that it averages its
predictions over the 8 flips/rotations of each image (inside the model, so the exported file does
the same), and its inference-mode val accuracy must reach the floor.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import keras
from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.evaluation
import bloodcell.models
import bloodcell.subtypes
import bloodcell.training
from bloodcell.dataset import Dataset
from bloodcell.tables import metrics_tables
from materializers import KerasModelMaterializer
from steps._cache import content_cache_policy
from steps._checkpoint import backup_dir
from steps._guard import guard

logger = get_logger(__name__)

MAX_PRIOR_CORRECTION = 4.0


@step(
    cache_policy=content_cache_policy(bloodcell.evaluation, bloodcell.models, bloodcell.subtypes, bloodcell.training),
    output_materializers={"tuned_model": KerasModelMaterializer},
)
def fine_tune(
    model: keras.Model,
    train: Dataset,
    val: Dataset,
    enabled: bool = True,
    unfreeze_blocks: int = 2,
    l2: float = 1e-4,
    training: dict[str, Any] | None = None,
    tta: bool = False,
    prior_correction: float = 0.0,
    min_val_accuracy: float = 0.0,
) -> Annotated[keras.Model, "tuned_model"]:
    """Fine-tune (transfer models), optionally wrap with test-time augmentation, check val accuracy."""
    if not 0.0 <= prior_correction <= MAX_PRIOR_CORRECTION:
        raise ValueError(f"prior_correction must be between 0 (off) and {MAX_PRIOR_CORRECTION:g} (1: the originals' "
                         f"class frequencies; more: that log-ratio times the value), got {prior_correction}")
    info: dict[str, Any] = {"tta": tta}
    if not enabled:
        info.update(skipped=True, reason="disabled in config")
    elif bloodcell.models.backbone_of(model) is None:
        info.update(skipped=True, reason=f"{model.name} has no pretrained backbone")
    else:
        cfg = bloodcell.training.fine_tune_config(training)
        if cfg.backup_dir is None:
            cfg.backup_dir = backup_dir("fine_tune", train.fingerprint, val.fingerprint,
                                        bloodcell.models.model_fingerprint(model), unfreeze_blocks, l2, training)
        start = time.perf_counter()
        with bloodcell.training.compute_scope(cfg):
            model, history, unfrozen = bloodcell.training.fine_tune_model(model, train, val, unfreeze_blocks, l2, cfg)
        info.update(skipped=False, unfrozen_layers=len(unfrozen), epochs=len(history.get("loss", [])),
                    wall_seconds=round(time.perf_counter() - start, 1),
                    best_val_accuracy=max(history.get("val_accuracy", [0.0])))
        logger.info("Fine-tuned %d layers of the top %d stages for %d epochs", len(unfrozen), unfreeze_blocks, info["epochs"])
    if info.get("skipped"):
        logger.info("fine-tuning skipped: %s", info["reason"])
    # the shipped model computes in float32 whatever precision it was trained in
    model = bloodcell.models.with_float32_compute(model)
    # the TTA wrapper calls ``model``, so shifting ``model``'s logits shifts the wrapper's too
    packaged = bloodcell.models.with_tta(model) if tta else model
    if prior_correction:
        info["val_accuracy_uncorrected"] = bloodcell.evaluation.accuracy(packaged, val.images, val.labels)
        shift = prior_correction * bloodcell.training.prior_log_ratio(train)
        bloodcell.models.shift_logits(model, shift)
        info["prior_correction"] = {name: round(float(v), 4) for name, v in zip(train.class_names, shift)}
    val_accuracy = bloodcell.evaluation.accuracy(packaged, val.images, val.labels)
    info["val_accuracy"] = val_accuracy
    if prior_correction:
        logger.info("prior correction %.2f: val accuracy %.4f -> %.4f", prior_correction,
                    info["val_accuracy_uncorrected"], val_accuracy)
    log_metadata(info)
    guard("fine_tune", metrics_tables({"val_accuracy": val_accuracy}), min_val_accuracy=min_val_accuracy)
    return packaged
