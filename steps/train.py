"""Step 5: train the model named in the config (the custom CNN with Lion, or an EfficientNetV2
backbone, frozen, with a new head and AdamW)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import keras
import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.model.build
import bloodcell.model.compute
import bloodcell.model.training
from bloodcell.data.dataset import Dataset
from bloodcell.data.tables import history_tables
from bloodcell.model.history import TrainingHistory
from bloodcell.model.training import TrainConfig
from materializers.history_materializer import TrainingHistoryMaterializer
from materializers.keras_materializer import KerasModelMaterializer
from steps._cache import content_cache_policy
from steps._checkpoint import backup_slot
from steps._guard import guard
from steps._metadata import log_to_model

logger = get_logger(__name__)

RENAMED_MODEL_OPTION = (
    "train: the parameter 'model' is now 'network' (the options of the network builder); "
    "rename steps.train.parameters.model to steps.train.parameters.network in your config"
)


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={
        "trained_model": KerasModelMaterializer,
        "training_history": TrainingHistoryMaterializer,
    },
)
def train(
    train_set: Dataset,
    val_set: Dataset,
    architecture: str = "custom_cnn",
    network: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    min_val_accuracy: float = 0.0,
    model: dict[str, Any] | None = None,
) -> tuple[Annotated[keras.Model, "trained_model"], Annotated[TrainingHistory, "training_history"]]:
    """Build ``architecture`` with the ``network`` options (``bloodcell.model.build``) and fit it
    on ``train_set`` with the ``training`` options (``bloodcell.model.training.TrainConfig``).
    ``model``: the name of ``network`` before 0.2, refused with a message that says so."""
    if model is not None:
        raise ValueError(RENAMED_MODEL_OPTION)
    cfg = TrainConfig.from_dict(training)
    keys = (train_set.fingerprint, val_set.fingerprint, architecture, network, training)
    with (
        backup_slot("train", *keys, folder=cfg.backup_dir) as slot,
        bloodcell.model.compute.compute_scope(cfg.compute_policy, cfg.distribute),
    ):
        cfg.backup_dir = slot.path
        net = bloodcell.model.build.build_model(
            architecture,
            train_set.class_names,
            image_size=train_set.images.shape[1],
            seed=cfg.seed,
            **(network or {}),
        )
        logger.info(
            "Training %s (%d parameters, %d trainable) on %d images, validating on %d; "
            "backups in %s",
            net.name,
            net.count_params(),
            sum(int(np.prod(w.shape)) for w in net.trainable_weights),
            len(train_set),
            len(val_set),
            cfg.backup_dir,
        )
        start = time.perf_counter()
        history = bloodcell.model.training.train_model(net, train_set, val_set, cfg, slot.callbacks)
        wall = time.perf_counter() - start
    epochs = len(history.get("loss", []))
    result = TrainingHistory(
        history=history,
        info={
            "architecture": architecture,
            "wall_seconds": round(wall, 1),
            "images_per_second": round(len(train_set) * epochs / wall, 1) if epochs else 0.0,
            "compute_policy": cfg.compute_policy,
            "distribute": cfg.distribute or "none",
        },
    )
    guard(
        "train",  # no NaN loss or val_loss; best val accuracy >= min_val_accuracy
        history_tables(history),
        min_val_accuracy=min_val_accuracy,
    )
    log_metadata(
        {
            "epochs": result.epochs,
            "wall_seconds": round(wall, 1),
            "best_val_accuracy": max(history.get("val_accuracy", [0.0])),
        }
    )
    log_to_model(
        {
            "architecture": architecture,
            "class_names": list(train_set.class_names),
            "image_size": int(train_set.images.shape[1]),
            "train_fingerprint": train_set.fingerprint,
            "train_samples": len(train_set),
            "val_fingerprint": val_set.fingerprint,
            "val_samples": len(val_set),
            "data_source": str(train_set.info.get("source", "")),
        }
    )
    return net, result
