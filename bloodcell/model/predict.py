"""Prediction with a shipped model: one self-contained ``.keras`` file that takes RGB 0..255 images
of its input size and outputs one probability per class, the class names inside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bloodcell import CLASS_NAMES
from bloodcell.data.sharded_images import ShardedImages


def load_model(path: str | Path):
    """A ``.keras`` model file, loaded in Keras safe mode."""
    import keras

    # registers every layer the project's models carry (referral imports build)
    import bloodcell.model.referral  # noqa: F401

    p = Path(path)
    if not p.is_file() or p.suffix != ".keras":
        raise FileNotFoundError(f"{p}: not a .keras model file")
    return keras.saving.load_model(p, safe_mode=True)


def model_classes(model) -> list[str]:
    """The class names the model carries; PBC's 8 for an 8-output model from before models carried
    them; otherwise a clear error."""
    from bloodcell.model.build import class_names_of

    names = class_names_of(model)
    if names is not None:
        return names
    if model.output_shape[-1] == len(CLASS_NAMES):
        return list(CLASS_NAMES)
    raise ValueError(
        f"model {model.name} does not name its {model.output_shape[-1]} classes (rule: a model "
        "made by this project carries its class names; retrain it, or export a newer version)"
    )


PREDICT_CHUNK = 1024  # images converted to float32 and predicted at a time (113 MB at 96 px)


def predict_probabilities(
    model, images: np.ndarray | ShardedImages, batch_size: int = 256
) -> np.ndarray:
    """``model``'s probabilities for each image, (N, classes), ``PREDICT_CHUNK`` images at a time
    (read from their shards, converted, predicted), so memory holds a chunk, not the set."""
    chunks = (
        (images[a : a + PREDICT_CHUNK] for a in range(0, len(images), PREDICT_CHUNK))
        if len(images)
        else [images]
    )
    return np.concatenate(
        [
            np.asarray(
                model.predict(np.asarray(c, dtype=np.float32), batch_size=batch_size, verbose=0)
            )
            for c in chunks
        ]
    )


def predict_classes(model, images: np.ndarray | ShardedImages, batch_size: int = 256) -> np.ndarray:
    """The class index ``model`` predicts for each image."""
    return predict_probabilities(model, images, batch_size).argmax(axis=1)


def accuracy(model, images: np.ndarray | ShardedImages, labels: np.ndarray) -> float:
    return float(np.mean(predict_classes(model, images) == labels))


def predict_table(model, images: np.ndarray | ShardedImages, ids: list[str]) -> pd.DataFrame:
    """``id, predicted_class, confidence, status, reason, check, distance`` and one ``p_<class>``
    probability column per class (calibrated; ``status``, ``reason``, the ``check`` that decided
    it and the feature ``distance`` to the training cells: ``bloodcell.model.referral``)."""
    from bloodcell.model.referral import score

    expected = tuple(model.input_shape[1:3])
    if images.shape[1:3] != expected:
        raise ValueError(
            f"the model takes {expected[0]}x{expected[1]} images, got "
            f"{images.shape[1]}x{images.shape[2]}"
        )
    class_names = model_classes(model)
    scores = score(model, images)
    probs = scores.probabilities
    table = pd.DataFrame(
        {
            "id": ids,
            "predicted_class": [class_names[i] for i in probs.argmax(axis=1)],
            "confidence": probs.max(axis=1),
            "status": scores.status,
            "reason": scores.reason,
            "check": scores.check,
            "distance": np.round(scores.distance, 3),
        }
    )
    for i, name in enumerate(class_names):
        table[f"p_{name}"] = probs[:, i]
    return table


MAX_UNLIKE_SHARE = 0.25
"""Above this share of a batch unlike the training cells, batch inference and ``predict`` warn: a
quarter, about ten times the share in the training lab's own held-out cells
(docs/experiments.md)."""


def unlike_share(table: pd.DataFrame) -> float:
    """The share of a prediction table's images that a check found unlike the training cells
    (blank, far, an unusual distance, thumbnail or stain; not a low confidence)."""
    from bloodcell.model.referral import UNLIKE

    return float(table["check"].isin(UNLIKE).mean()) if len(table) else 0.0


def unlike_warning(share: float) -> str:
    return (
        f"this batch looks unlike the training lab ({share:.0%} of its images are unlike the "
        "training cells): "
        "adapt with a few labelled cells, `bloodcell adapt --data FOLDER --output model.keras`"
    )
