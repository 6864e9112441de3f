"""Keras 3 model materializer: one ``model.keras`` file, loaded with ``safe_mode=True``."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import keras
from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.model.batchnorm import batchnorm_layers
from bloodcell.model.build import model_fingerprint
from bloodcell.model.referral import PREDATES, describe
from materializers._io import write_text


class KerasModelMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (keras.Model,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
    FILE_NAME = "model.keras"

    def save(self, model: keras.Model) -> None:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            local = os.path.join(tmp, self.FILE_NAME)
            model.save(local)
            fileio.copy(local, os.path.join(self.uri, self.FILE_NAME), overwrite=True)

    def load(self, data_type: type[Any]) -> keras.Model:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            local = os.path.join(tmp, self.FILE_NAME)
            fileio.copy(os.path.join(self.uri, self.FILE_NAME), local, overwrite=True)
            return keras.saving.load_model(local, safe_mode=True)

    def compute_content_hash(self, model: keras.Model) -> str:
        """SHA-256 of the architecture (JSON config) and every weight, trainable or not."""
        return model_fingerprint(model)

    def extract_metadata(self, model: keras.Model) -> dict[str, Any]:
        return {
            "architecture": model.name,
            "layers": len(model.layers),
            "parameters": int(model.count_params()),
            "trainable_parameters": int(sum(int(w.numpy().size) for w in model.trainable_weights)),
            "input_shape": [d if d is not None else -1 for d in model.input_shape],
            "output_shape": [d if d is not None else -1 for d in model.output_shape],
            "batch_norm_layers": len(
                batchnorm_layers(model)
            ),  # 0: nothing for unlabelled cells to recalibrate
            # temperature, thresholds and stain ranges of the rule inside the model
            # (bloodcell.model.referral)
            "referral": describe(model) or PREDATES,
        }

    def save_visualizations(self, model: keras.Model) -> dict[str, VisualizationType]:
        lines: list[str] = []
        model.summary(print_fn=lambda s, **_: lines.append(s), line_length=100)
        path = write_text(self, "summary.md", "```\n" + "\n".join(lines) + "\n```\n")
        return {path: VisualizationType.MARKDOWN}
