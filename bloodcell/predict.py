"""Batch prediction with an exported model: one self-contained ``.keras`` file that takes 96x96 RGB
0..255 and outputs 8 probabilities in the alphabetical class order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bloodcell import CLASS_NAMES


def load_model(path: str | Path):
    import keras

    p = Path(path)
    if not p.is_file() or p.suffix != ".keras":
        raise FileNotFoundError(f"{p}: not a .keras model file")
    return keras.saving.load_model(p, safe_mode=True)


def predict_table(model, images: np.ndarray, ids: list[str], class_names=CLASS_NAMES, batch_size: int = 256) -> pd.DataFrame:
    """``id, predicted_class, confidence`` and one probability column per class."""
    expected = tuple(model.input_shape[1:3])
    if images.shape[1:3] != expected:
        raise ValueError(f"the model takes {expected[0]}x{expected[1]} images, got {images.shape[1]}x{images.shape[2]}")
    probs = np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))
    if probs.shape[1] != len(class_names):
        raise ValueError(f"the model outputs {probs.shape[1]} classes, expected {len(class_names)}")
    table = pd.DataFrame({
        "id": ids,
        "predicted_class": [class_names[i] for i in probs.argmax(axis=1)],
        "confidence": probs.max(axis=1),
    })
    for i, name in enumerate(class_names):
        table[f"p_{name}"] = probs[:, i]
    return table
