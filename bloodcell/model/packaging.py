"""Turning a trained model into the shipped one: float32 compute, the prior correction,
test-time augmentation, calibrated probabilities and the referral rule, all inside one Keras
model (so ``.keras`` export, ``predict``, batch inference and any serving compute the same
thing). The rule itself is in ``bloodcell.model.referral``."""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np
from keras import layers

from bloodcell.data import dihedral
from bloodcell.data.dataset import Dataset
from bloodcell.model.build import output_layer
from bloodcell.model.predict import accuracy
from bloodcell.model.referral import ReferralConfig, fit_referral

MAX_PRIOR_CORRECTION = 4.0


def check_prior_correction(value: float) -> None:
    if not 0.0 <= value <= MAX_PRIOR_CORRECTION:
        raise ValueError(
            f"prior_correction must be between 0 (off) and {MAX_PRIOR_CORRECTION:g} (1: the "
            f"originals' class frequencies; more: that log-ratio times the value), got {value}"
        )


def package_model(
    model: keras.Model,
    train: Dataset,
    val: Dataset,
    *,
    tta: bool,
    prior_correction: float,
    referral: ReferralConfig | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """The model to ship, and notes on it (val accuracy with and without the correction, the
    shift per class, the referral rule):

    - it computes in float32, whatever precision it was trained in;
    - with ``prior_correction`` > 0 its logits are shifted by that multiple of
      ``prior_log_ratio(train)`` (rebalancing trained it on equal priors);
    - with ``tta`` it averages its probabilities over the 8 rotations/reflections of each image;
    - its probabilities are calibrated on ``val`` and it carries the referral rule, fitted on
      ``train``'s originals and ``val`` (``bloodcell.model.referral.fit_referral``).
    """
    check_prior_correction(prior_correction)
    model = with_float32_compute(model)
    # the TTA wrapper calls ``model``, so shifting ``model``'s logits shifts the wrapper's too
    packaged = with_tta(model) if tta else model
    info: dict[str, Any] = {"tta": tta}
    if prior_correction:
        info["val_accuracy_uncorrected"] = accuracy(packaged, val.images, val.labels)
        shift = prior_correction * prior_log_ratio(train)
        shift_logits(model, shift)
        info["prior_correction"] = {
            name: round(float(v), 4) for name, v in zip(train.class_names, shift)
        }
    packaged, info["referral"] = fit_referral(packaged, train.originals(), val, referral)
    info["val_accuracy"] = accuracy(packaged, val.images, val.labels)
    return packaged, info


def prior_log_ratio(train: Dataset) -> np.ndarray:
    """Per class, log(frequency among the training originals / frequency in the (rebalanced)
    training set). Rebalancing trains the model on equal priors, so it over-predicts the small
    classes; adding this to its logits gives the posterior under the originals' class frequencies
    (logit adjustment). Zero for a class absent from either."""
    n = len(train.class_names)
    counts = np.bincount(train.labels, minlength=n).astype(np.float64)
    originals = np.bincount(train.originals().labels, minlength=n).astype(np.float64)
    ratio = np.zeros(n)
    have = (counts > 0) & (originals > 0)
    ratio[have] = np.log(originals[have] / originals.sum()) - np.log(counts[have] / counts.sum())
    return ratio


def shift_logits(model: keras.Model, shift: Any) -> None:
    """Add ``shift`` (one value a class) to the logits of the model's softmax output layer
    ``probabilities``, in place: the probabilities become proportional to the old ones times
    exp(shift). The model's architecture is unchanged (it is the output layer's bias)."""
    head = output_layer(model)
    shift = np.asarray(shift, dtype="float32")
    if not isinstance(head, layers.Dense) or head.bias is None or head.bias.shape != shift.shape:
        raise ValueError(
            f"cannot shift the logits of {model.name}: its 'probabilities' layer is not a Dense "
            f"layer with a bias of shape {shift.shape}"
        )
    head.bias.assign(keras.ops.convert_to_numpy(head.bias) + shift)


def with_tta(model: keras.Model) -> keras.Model:
    """Test-time augmentation inside the model: the average of its probabilities over the 8
    rotations/reflections of each image (cells have no orientation). Built from Keras ops only, so
    it saves and loads as one ``.keras`` file in safe mode."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    views = [model(dihedral.transform(inputs, k, keras.ops)) for k in range(dihedral.COUNT)]
    outputs = layers.Average(name="tta_average")(views)
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


def with_float32_compute(model: keras.Model) -> keras.Model:
    """``model`` computing in float32 throughout: a model trained under a mixed-precision policy
    keeps that policy in its saved config, so it would run in float16/bfloat16 wherever it is
    loaded (slow or unsupported on many CPUs). The weights are float32 already and are copied as
    they are; a model without mixed-precision layers is returned unchanged."""
    config = json.loads(model.to_json())
    mixed = False

    def to_float32(node: Any) -> Any:
        nonlocal mixed
        if isinstance(node, dict):
            if node.get("class_name") == "DTypePolicy" and str(
                node.get("config", {}).get("name", "")
            ).startswith("mixed_"):
                mixed = True
                return "float32"
            return {k: to_float32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        return node

    config = to_float32(config)
    if not mixed:
        return model
    out = keras.models.model_from_json(json.dumps(config))
    out.set_weights(model.get_weights())
    return out
