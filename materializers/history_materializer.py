"""Materializer for :class:`bloodcell.model.training.TrainingHistory`: JSON plus a learning-curve
plot."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.evaluation import plots
from bloodcell.model.history import TrainingHistory
from materializers._io import read_json, write_bytes, write_json


class TrainingHistoryMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (TrainingHistory,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.STATISTICS

    def save(self, data: TrainingHistory) -> None:
        write_json(self, "history.json", {"history": data.history, "info": data.info})

    def load(self, data_type: type[Any]) -> TrainingHistory:
        d = read_json(self, "history.json")
        return TrainingHistory(history=d["history"], info=d["info"])

    def compute_content_hash(self, data: Any) -> str:
        return hashlib.sha256(
            json.dumps({"history": data.history, "info": data.info}, sort_keys=True).encode()
        ).hexdigest()

    def extract_metadata(self, data: TrainingHistory) -> dict[str, Any]:
        meta: dict[str, Any] = {"epochs": data.epochs}
        for key in ("accuracy", "val_accuracy", "loss", "val_loss"):
            if data.history.get(key):
                meta[f"final_{key}"] = data.history[key][-1]
        if data.history.get("val_accuracy"):
            meta["best_val_accuracy"] = max(data.history["val_accuracy"])
        meta.update({k: v for k, v in data.info.items() if isinstance(v, (int, float, str, bool))})
        return meta

    def save_visualizations(self, data: TrainingHistory) -> dict[str, VisualizationType]:
        if not data.history:
            return {}
        return {
            write_bytes(
                self, "curves.png", plots.training_curves(data.history)
            ): VisualizationType.IMAGE
        }
