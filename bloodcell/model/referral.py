"""Whether an answer can be trusted: calibrated probabilities, and for every image a ``status``
(``accept``, ``review`` or ``not_a_cell``) with a short ``reason``.

The rule is fitted when the model is packaged (``fit_referral``) and travels inside the shipped
``.keras`` file as a :class:`ReferralRule` layer (an identity on the probabilities, like
``ClassNames``): its config holds the temperature, the thresholds and the training cells' stain
ranges, its weights the class means and the shrunk precision matrix of the training cells'
features. ``predict``, batch inference, serving and ``adapt`` all call :func:`score`, so they
give the same status for the same image. A model from before the rule answers
``accept`` / ``"model predates referral"``.

- **Calibration**: temperature scaling (Guo et al. 2017) of the head's logits, fitted on the
  validation split by likelihood through the test-time augmentation average, and written into the
  head's weights: the model's own probabilities are the calibrated ones.
- **Unlike any training cell**: the Mahalanobis distance (class means, one Ledoit-Wolf shrunk
  covariance; Lee et al. 2018) of the image's pooled convolutional features (averaged over the
  TTA views) to the nearest class. Beyond ``review_distance`` (a quantile of the validation cells'
  distances) a cell is ``review``; beyond ``far_distance`` it is ``not_a_cell``.
- **Image checks** as ``ingest`` runs them, per image: a near-constant image is ``not_a_cell``; a
  thumbnail the training originals' principal components explain badly (the outlier filter's
  reconstruction score; catches several cells in one picture) or a stain colour outside the
  training cells' ranges is ``review``.
- **Confidence**: below ``confidence_threshold`` (the lowest that keeps accuracy among the
  accepted validation cells at ``target_accuracy``) a cell is ``review``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers
from pydantic import model_validator

from bloodcell.data import dihedral
from bloodcell.data.dataset import Dataset
from bloodcell.data.stain import CHANNELS, channel_stats, profile
from bloodcell.model.build import all_layers, network_of, output_layer
from bloodcell.options import Options

STATUSES = ("accept", "review", "not_a_cell")
CHECKS = ("blank", "far", "distance", "pixels", "stain", "confidence")
"""What sent an image to review or not_a_cell; all but ``confidence`` say it is unlike the
training cells."""
UNLIKE = CHECKS[:-1]
PREDATES = "model predates referral"
RULE_VERSION = 1
NOTHING = 1.01  # a confidence threshold above any probability: nothing is accepted
DISTANCE_LAYER = "gap"  # the pooled convolutional features, where a network names them so
THUMB = 24  # thumbnail side of the pixel check (the outlier filter's)


class ReferralConfig(Options):
    """Options of the rule fitted in ``fine_tune`` (``referral:`` in its parameters)."""

    WHERE = "referral"

    target_accuracy: float = 0.995  # accuracy among the accepted validation cells
    unusual_share: float = (
        0.01  # share of validation cells beyond review_distance (and pixel_residual)
    )
    far_factor: float = 2.0  # far_distance = far_factor x the largest validation distance
    min_std: float = 2.0  # pixel std below which an image is blank (ingest's rule)
    stain_margin: float = 10.0  # widens the training cells' channel-mean ranges (0..255)
    fit_samples: int = 4096  # training originals the class means, covariance and PCA are fitted on
    pixel_components: int = 32  # principal components of the thumbnails (the outlier filter's)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ReferralConfig:
        if not 0.5 < self.target_accuracy <= 1.0:
            raise ValueError(
                f"referral.target_accuracy {self.target_accuracy} (rule: between 0.5 and 1)"
            )
        if not 0.0 <= self.unusual_share < 0.5:
            raise ValueError(
                f"referral.unusual_share {self.unusual_share} (rule: between 0 and 0.5)"
            )
        if self.far_factor < 1.0:
            raise ValueError(f"referral.far_factor {self.far_factor} (rule: at least 1)")
        return self


@keras.saving.register_keras_serializable(package="bloodcell")
class ReferralRule(layers.Layer):
    """Identity on the probabilities that carries the referral rule: ``rule`` (temperature,
    thresholds, stain ranges, how it was fitted) in its config, the training cells' class means
    and precision matrix as its (non-trainable) weights."""

    def __init__(
        self,
        rule: dict[str, Any],
        num_classes: int,
        feature_dim: int,
        pixel_dim: int = THUMB * THUMB * 3,
        components: int = 32,
        **kwargs: Any,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.rule = dict(rule)
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.pixel_dim, self.components = int(pixel_dim), int(components)
        self.class_means = self.add_weight(
            shape=(self.num_classes, self.feature_dim),
            initializer="zeros",
            trainable=False,
            name="class_means",
        )
        self.precision = self.add_weight(
            shape=(self.feature_dim, self.feature_dim),
            initializer="zeros",
            trainable=False,
            name="precision",
        )
        self.pixel_mean = self.add_weight(
            shape=(self.pixel_dim,), initializer="zeros", trainable=False, name="pixel_mean"
        )
        self.pixel_components = self.add_weight(
            shape=(self.components, self.pixel_dim),
            initializer="zeros",
            trainable=False,
            name="pixel_components",
        )

    def call(self, inputs: Any) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rule": self.rule,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "pixel_dim": self.pixel_dim,
            "components": self.components,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {w: keras.ops.convert_to_numpy(getattr(self, w)) for w in WEIGHTS}


WEIGHTS = ("class_means", "precision", "pixel_mean", "pixel_components")


def rule_layer(model: keras.Model) -> ReferralRule | None:
    """The rule a model carries, or None (a model from before the rule)."""
    for layer in all_layers(model):
        if isinstance(layer, ReferralRule):
            return layer
    return None


def without_rule(model: keras.Model) -> keras.Model:
    """``model`` without its rule layer (the same layers up to it), or ``model`` if it has none."""
    last = model.layers[-1]
    if not isinstance(last, ReferralRule):
        return model
    return keras.Model(model.inputs, last.input, name=model.name)


def with_rule(
    model: keras.Model, rule: dict[str, Any], arrays: dict[str, np.ndarray]
) -> keras.Model:
    """``model`` (any earlier rule dropped) with a :class:`ReferralRule` after its output, its
    weights ``arrays`` (``WEIGHTS``)."""
    model = without_rule(model)
    (k, d), (c, p) = arrays["class_means"].shape, arrays["pixel_components"].shape
    layer = ReferralRule(rule, k, d, pixel_dim=p, components=c, name="referral_rule")
    out = keras.Model(model.inputs, layer(model.outputs[0]), name=model.name)
    for name in WEIGHTS:
        getattr(layer, name).assign(arrays[name].astype("float32"))
    return out


def fit_pixels(images: np.ndarray, components: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The mean and principal components of the images' thumbnails (the outlier filter's PCA)."""
    from sklearn.decomposition import PCA

    from bloodcell.data.outliers import thumbnails

    pca = PCA(min(components, len(images) - 1), random_state=seed).fit(thumbnails(images, THUMB))
    return pca.mean_, pca.components_


def pixel_residuals(
    images: Any, mean: np.ndarray, components: np.ndarray, chunk: int = 2048
) -> np.ndarray:
    """Each image's thumbnail residual (RMS, 0..1) after its projection on the components."""
    from bloodcell.data.outliers import thumbnails

    out = []
    for a in range(0, len(images), chunk):
        t = thumbnails(np.asarray(images[a : a + chunk]), THUMB).astype(np.float64) - mean
        r = t - (t @ components.T) @ components
        out.append(np.sqrt((r**2).mean(axis=1)))
    return np.concatenate(out) if out else np.zeros(0)


class Scorer:
    """One pass of a shipped model that gives, per image, the head's input features for each TTA
    view (the model's own probabilities are the mean over the views of the head's softmax) and,
    averaged over the views, the features the distance is measured in: the pooled convolutional
    features (layer ``gap``) where the network has them, else the head's input."""

    def __init__(self, model: keras.Model):
        shipped = without_rule(model)
        net = network_of(shipped)
        self.head = output_layer(net)
        pooled = (
            net.get_layer(DISTANCE_LAYER).output
            if DISTANCE_LAYER in [la.name for la in net.layers]
            else self.head.input
        )
        features = keras.Model(net.inputs, [self.head.input, pooled], name="features")
        inputs = keras.Input(shape=model.input_shape[1:], name="image")
        views = range(dihedral.COUNT) if net is not shipped else [0]
        per_view = [features(dihedral.transform(inputs, k, keras.ops)) for k in views]
        self.model = keras.Model(
            inputs,
            [
                keras.ops.stack([h for h, _ in per_view], axis=1),
                keras.ops.mean(keras.ops.stack([g for _, g in per_view], axis=1), axis=1),
            ],
            name="view_features",
        )

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            keras.ops.convert_to_numpy(self.head.kernel).astype(np.float64),
            keras.ops.convert_to_numpy(self.head.bias).astype(np.float64),
        )

    def view_features(
        self, images: Any, batch_size: int = 256, chunk: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, views, D) head inputs and (N, E) distance features, ``chunk`` images at a time."""
        parts = [
            self.model.predict(
                np.asarray(images[a : a + chunk], np.float32), batch_size=batch_size, verbose=0
            )
            for a in range(0, len(images), chunk)
        ]
        if not parts:
            (_, v, d), (_, e) = self.model.output_shape
            return np.zeros((0, v, d), np.float32), np.zeros((0, e), np.float32)
        return np.concatenate([np.asarray(p[0]) for p in parts]), np.concatenate(
            [np.asarray(p[1]) for p in parts]
        )


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def view_probabilities(
    view_feats: np.ndarray, kernel: np.ndarray, bias: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """The TTA average of the head's softmax, with the logits divided by ``temperature``."""
    return softmax((view_feats.astype(np.float64) @ kernel + bias) / temperature).mean(axis=1)


def fit_temperature(
    view_feats: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray
) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (Guo et al. 2017),
    through the TTA average."""
    from scipy.optimize import minimize_scalar

    logits = view_feats.astype(np.float64) @ kernel + bias
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t)).mean(axis=1)[rows, labels]
        return float(-np.log(np.maximum(p, 1e-12)).mean())

    return float(
        np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x)
    )


def scale_logits(model: keras.Model, temperature: float) -> None:
    """Divide the logits of the model's ``probabilities`` layer by ``temperature``, in place (its
    kernel and bias; the architecture is unchanged)."""
    head = output_layer(network_of(without_rule(model)))
    head.kernel.assign(keras.ops.convert_to_numpy(head.kernel) / temperature)
    head.bias.assign(keras.ops.convert_to_numpy(head.bias) / temperature)


def fit_distance(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the Ledoit-Wolf shrunk precision of the features about them."""
    from sklearn.covariance import LedoitWolf

    features = features.astype(np.float64)
    means = np.stack(
        [
            features[labels == c].mean(axis=0) if (labels == c).any() else features.mean(axis=0)
            for c in range(num_classes)
        ]
    )
    lw = LedoitWolf(assume_centered=True).fit(features - means[labels])
    return means, lw.precision_


def distances(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Each image's Mahalanobis distance to the nearest class mean."""
    f = features.astype(np.float64)
    m = means.astype(np.float64)
    p = precision.astype(np.float64)
    fp = f @ p
    d2 = (fp * f).sum(axis=1)[:, None] - 2 * fp @ m.T + ((m @ p) * m).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def confidence_threshold(
    conf: np.ndarray, correct: np.ndarray, target: float
) -> tuple[float, float, float]:
    """The lowest confidence threshold at which the accuracy of the images at or above it is at
    least ``target``; and that coverage and accuracy. If no threshold reaches it, ``NOTHING``
    (above any probability: every image goes to review)."""
    order = np.argsort(-conf, kind="stable")
    acc = np.cumsum(correct[order]) / np.arange(1, len(conf) + 1)
    ok = np.flatnonzero(acc >= target)
    if not len(ok):
        return NOTHING, 0.0, float("nan")
    t = float(conf[order[int(ok[-1])]])
    accepted = conf >= t
    return t, float(accepted.mean()), float(correct[accepted].mean())


@dataclass
class Scores:
    """What :func:`score` gives for a batch of images."""

    probabilities: np.ndarray  # calibrated (the model's own output)
    uncalibrated: np.ndarray  # the same before temperature scaling
    distance: np.ndarray  # Mahalanobis distance to the nearest class (NaN: no rule)
    status: list[str]
    reason: list[str]
    check: list[str]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def image_flags(
    images: Any, rule: dict[str, Any], chunk: int = 2048
) -> tuple[list[str | None], list[str | None]]:
    """Per image: why it is not a cell (blank), and why its stain is unlike the training cells."""
    blank: list[str | None] = []
    stain: list[str | None] = []
    ranges = rule["stain_ranges"]
    for a in range(0, len(images), chunk):
        means, stds = channel_stats(np.asarray(images[a : a + chunk]))
        for m, s in zip(means, stds.mean(axis=1)):
            blank.append(
                f"a blank image (pixel std {s:.1f} < {rule['min_std']:g})"
                if s < rule["min_std"]
                else None
            )
            off = [
                (c, v, ranges[c])
                for c, v in zip(CHANNELS, m)
                if not ranges[c][0] <= v <= ranges[c][1]
            ]
            stain.append(
                None
                if not off
                else "stain unlike the training cells ("
                + ", ".join(f"{c} {v:.0f} outside {lo:g}-{hi:g}" for c, v, (lo, hi) in off)
                + ")"
            )
    return blank, stain


def _two(a: float, b: float) -> str:
    """``a`` with 2 decimals, or as many more as it takes to tell it from ``b``."""
    for digits in range(2, 7):
        if f"{a:.{digits}f}" != f"{b:.{digits}f}":
            return f"{a:.{digits}f}"
    return f"{a:.6f}"


def decide(
    probs: np.ndarray,
    dist: np.ndarray,
    pixels: np.ndarray,
    blank: list[str | None],
    stain: list[str | None],
    rule: dict[str, Any],
) -> tuple[list[str], list[str], list[str]]:
    """Each image's status, reason and the check that decided it (``CHECKS``), the first that
    applies: blank or far from every training cell -> ``not_a_cell``; an unusual distance,
    thumbnail or stain, or a low confidence -> ``review``; else ``accept`` (check ``""``)."""
    status, reason, check = [], [], []
    t, review, far, px = (
        rule["confidence_threshold"],
        rule["review_distance"],
        rule["far_distance"],
        rule["pixel_residual"],
    )
    for p, d, r, b, s in zip(probs, dist, pixels, blank, stain):
        c = float(p.max())
        if b:
            out = ("not_a_cell", b, "blank")
        elif d > far:
            out = ("not_a_cell", f"unlike any training cell (distance {d:.1f} > {far:.1f})", "far")
        elif d > review:
            out = (
                "review",
                f"unusual for the training cells (distance {d:.1f} > {review:.1f})",
                "distance",
            )
        elif r > px:
            out = (
                "review",
                f"unlike the training images (thumbnail residual {r:.3f} > {px:.3f})",
                "pixels",
            )
        elif s:
            out = ("review", s, "stain")
        elif c < t:
            out = ("review", f"confidence {_two(c, t)} below {_two(t, c)}", "confidence")
        else:
            out = ("accept", f"confidence {c:.2f}", "")
        status.append(out[0]), reason.append(out[1]), check.append(out[2])
    return status, reason, check


def score(model: keras.Model, images: Any, scorer: Scorer | None = None) -> Scores:
    """Probabilities, distances, status and reason for each image (uint8 RGB, the model's size).
    A model without a rule: its probabilities, ``accept`` and "model predates referral"."""
    layer = rule_layer(model)
    if layer is None:
        from bloodcell.model.predict import predict_probabilities

        return predates(predict_probabilities(model, images))
    scorer = scorer or Scorer(model)
    features = scorer.view_features(images)
    return from_rule(features, images, *rule_weights(layer), *scorer.head_weights())


def predates(probs: np.ndarray) -> Scores:
    """The answer of a model from before the rule: its probabilities, every image accepted."""
    n = len(probs)
    return Scores(probs, probs, np.full(n, np.nan), ["accept"] * n, [PREDATES] * n, [""] * n)


def rule_weights(layer: ReferralRule) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The rule ``layer``'s options and weights as numpy (the pixel ones as float64), read once:
    for a caller that scores many batches with the same rule (the service)."""
    w = layer.arrays()
    for name in ("pixel_mean", "pixel_components"):
        w[name] = w[name].astype(np.float64)
    return dict(layer.rule), w


def from_rule(
    features: tuple[np.ndarray, np.ndarray],
    images: Any,
    rule: dict[str, Any],
    w: dict[str, np.ndarray],
    kernel: np.ndarray,
    bias: np.ndarray,
) -> Scores:
    """:class:`Scores` from the images' features (``Scorer.view_features``), the rule's options
    and weights (``rule_weights``) and the head's kernel and bias."""
    views, pooled = features
    probs = view_probabilities(views, kernel, bias)
    uncal = view_probabilities(views, kernel, bias, 1.0 / rule["temperature"])
    dist = distances(pooled, w["class_means"], w["precision"])
    pixels = pixel_residuals(images, w["pixel_mean"], w["pixel_components"])
    blank, stain = image_flags(images, rule)
    return Scores(
        probs.astype(np.float32),
        uncal.astype(np.float32),
        dist,
        *decide(probs, dist, pixels, blank, stain, rule),
    )


def options_of(model: keras.Model) -> ReferralConfig:
    """The options a model's rule was fitted with (the defaults for a model without one)."""
    rule = describe(model)
    return ReferralConfig.from_dict(rule.get("options")) if rule else ReferralConfig()


def describe(model: keras.Model) -> dict[str, Any] | None:
    """The rule a model carries, for metadata and lineage (None: a model from before the rule)."""
    layer = rule_layer(model)
    return None if layer is None else dict(layer.rule)


def fit_referral(
    model: keras.Model, fit_set: Dataset, val_set: Dataset, cfg: ReferralConfig | None = None
) -> tuple[keras.Model, dict[str, Any]]:
    """``model`` calibrated (its logits divided by the fitted temperature, in place) with the rule
    fitted on ``fit_set`` (training originals, at most ``fit_samples``: class means, covariance,
    stain ranges) and ``val_set`` (held-out cells: temperature and thresholds), and the rule.
    Both sets' labels are indices into the model's classes."""
    cfg = cfg or ReferralConfig()
    model = without_rule(model)
    fit_set = fit_set.sample(cfg.fit_samples, cfg.seed)
    fit, fit_labels = np.asarray(fit_set.images), fit_set.labels
    val, val_labels = np.asarray(val_set.images), val_set.labels
    scorer = Scorer(model)
    kernel, bias = scorer.head_weights()
    val_views, val_pooled = scorer.view_features(val)
    temperature = fit_temperature(val_views, val_labels, kernel, bias)
    scale_logits(model, temperature)
    means, precision = fit_distance(scorer.view_features(fit)[1], fit_labels, kernel.shape[1])
    pixel_mean, pixel_components = fit_pixels(fit, cfg.pixel_components, cfg.seed)
    val_dist = distances(val_pooled, means, precision)
    val_pixels = pixel_residuals(val, pixel_mean, pixel_components)

    def quantile(values: np.ndarray) -> float:
        return (
            float(np.quantile(values, 1.0 - cfg.unusual_share))
            if cfg.unusual_share
            else float(values.max())
        )

    rule: dict[str, Any] = {
        "version": RULE_VERSION,
        "temperature": round(temperature, 6),
        "target_accuracy": cfg.target_accuracy,
        "review_distance": quantile(val_dist),
        "far_distance": float(cfg.far_factor * val_dist.max()),
        "pixel_residual": quantile(val_pixels),
        "min_std": cfg.min_std,
        "stain_ranges": profile(fit, margin=cfg.stain_margin),
        "confidence_threshold": 0.0,
        "fitted_on": {"features": len(fit), "thresholds": len(val)},
        "options": cfg.model_dump(),
    }
    probs = view_probabilities(val_views, kernel, bias, temperature)
    blank, stain = image_flags(val, rule)
    plain, _, _ = decide(
        probs, val_dist, val_pixels, blank, stain, rule
    )  # every check but confidence
    kept = np.array([s == "accept" for s in plain])
    correct = probs.argmax(axis=1) == val_labels
    t, _, _ = confidence_threshold(probs.max(axis=1)[kept], correct[kept], cfg.target_accuracy)
    rule["confidence_threshold"] = round(t, 6)
    status, _, _ = decide(probs, val_dist, val_pixels, blank, stain, rule)
    accepted = np.array([s == "accept" for s in status])
    rule["val"] = {
        "coverage": round(float(accepted.mean()), 4),
        "accuracy_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
        "not_a_cell": round(float(np.mean([s == "not_a_cell" for s in status])), 4),
    }
    arrays = {
        "class_means": means,
        "precision": precision,
        "pixel_mean": pixel_mean,
        "pixel_components": pixel_components,
    }
    return with_rule(model, rule, arrays), rule
