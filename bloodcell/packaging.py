"""Turning a trained model into the shipped one: float32 compute, the prior correction,
test-time augmentation, calibrated probabilities and the referral rule, all inside one Keras
model (so ``.keras`` export, ``predict``, batch inference and any serving compute the same
thing). The model transforms themselves are in ``bloodcell.models``, the rule in
``bloodcell.referral``."""

from __future__ import annotations

from typing import Any

import keras

from bloodcell.calibration import prior_log_ratio
from bloodcell.dataset import Dataset
from bloodcell.evaluation import accuracy
from bloodcell.models import shift_logits, with_float32_compute, with_tta
from bloodcell.referral import ReferralConfig, fit_referral

MAX_PRIOR_CORRECTION = 4.0


def check_prior_correction(value: float) -> None:
    if not 0.0 <= value <= MAX_PRIOR_CORRECTION:
        raise ValueError(f"prior_correction must be between 0 (off) and {MAX_PRIOR_CORRECTION:g} (1: the originals' "
                         f"class frequencies; more: that log-ratio times the value), got {value}")


def package_model(model: keras.Model, train: Dataset, val: Dataset, *, tta: bool,
                  prior_correction: float, referral: ReferralConfig | None = None) -> tuple[keras.Model, dict[str, Any]]:
    """The model to ship, and notes on it (val accuracy with and without the correction, the
    shift per class, the referral rule):

    - it computes in float32, whatever precision it was trained in;
    - with ``prior_correction`` > 0 its logits are shifted by that multiple of
      ``calibration.prior_log_ratio(train)`` (rebalancing trained it on equal priors);
    - with ``tta`` it averages its probabilities over the 8 rotations/reflections of each image;
    - its probabilities are calibrated on ``val`` and it carries the referral rule, fitted on
      ``train``'s originals and ``val`` (``bloodcell.referral.fit_referral``).
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
        info["prior_correction"] = {name: round(float(v), 4) for name, v in zip(train.class_names, shift)}
    packaged, info["referral"] = fit_referral(packaged, train.originals(), val, referral)
    info["val_accuracy"] = accuracy(packaged, val.images, val.labels)
    return packaged, info
