"""Stochastic weight averaging (Izmailov et al., 2018) as a Keras callback."""

from __future__ import annotations

import os

import keras
import numpy as np


class WeightAveraging(keras.callbacks.Callback):
    """Stochastic weight averaging (Izmailov et al., 2018): the running mean of the trainable
    weights at the end of each epoch from ``start_epoch`` on; ``apply`` puts it on the model (call
    it after ``fit``, so it replaces the best epoch that early stopping restores). Batch norm
    statistics do not fit averaged weights: recompute them afterwards. With ``state_dir`` the
    running mean is saved there after each epoch and picked up again by a resumed fit."""

    def __init__(self, start_epoch: int, state_dir: str | None = None):
        super().__init__()
        self.start_epoch = start_epoch
        self.path = os.path.join(state_dir, "weight_average.npz") if state_dir else None
        self.mean: list[np.ndarray] | None = None
        self.epochs: list[int] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.mean, self.epochs = None, []
        if self.path and os.path.exists(self.path):
            with np.load(self.path, allow_pickle=False) as saved:
                self.epochs = [int(e) for e in saved["epochs"]]
                self.mean = [saved[f"w{i}"] for i in range(len(self.model.trainable_weights))]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.start_epoch or epoch in self.epochs:
            return
        current = [
            keras.ops.convert_to_numpy(w).astype(np.float64) for w in self.model.trainable_weights
        ]
        n = len(self.epochs)
        self.mean = (
            current
            if self.mean is None
            else [m + (c - m) / (n + 1) for m, c in zip(self.mean, current)]
        )
        self.epochs.append(epoch)
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp.npz"
            np.savez(
                tmp, epochs=np.asarray(self.epochs), **{f"w{i}": m for i, m in enumerate(self.mean)}
            )
            os.replace(tmp, self.path)

    def apply(self) -> list[int]:
        """Set the model's trainable weights to the average (if any epoch was averaged), forget
        the saved state, and return the averaged epochs (0-based)."""
        if self.mean is not None:
            for w, m in zip(self.model.trainable_weights, self.mean):
                w.assign(m.astype(w.dtype))
        if self.path and os.path.exists(self.path):
            os.remove(self.path)
        return self.epochs
