"""Online classification, without ZenML: the rules a request's images must follow, decoding them
exactly as ``bloodcell predict`` reads files (:func:`bloodcell.data.images.decode_image`), the
answer for each image, and an occlusion map of where the model looked.

A request is all or nothing: if any image breaks a rule, :func:`decode_request` raises one
:class:`RequestError` that lists every such image by index with the rule it broke, and nothing is
classified. A 2xx answer therefore always covers every image, in the order sent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import hashlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from bloodcell.data.images import IngestError, decode_image

FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
"""The image formats a request may hold (PIL's names); PIL's other decoders are never tried."""

REQUEST_SHAPE = (
    'the body is {"parameters": {"images": ["<base64 of an image file>", ...], '
    '"explain": <index, optional>}}'
)


@dataclass(frozen=True)
class Limits:
    """What one request may hold. The defaults allow a few dozen microscope fields or a plate of
    single-cell crops per request."""

    max_images: int = 64
    max_image_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_body_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"serving limit {name}={value!r} (rule: a positive integer)")
        if self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ValueError(
                f"serving limit max_pixels={self.max_pixels} "
                "(rule: at most PIL's decompression-bomb "
                f"limit, {Image.MAX_IMAGE_PIXELS} pixels)"
            )


class RequestError(ValueError):
    """Bad input: ``details`` names each image (``index``; ``None`` for the request as a whole),
    the ``rule`` it broke and a ``message``. ``status`` is the HTTP status to answer with."""

    def __init__(self, error: str, details: list[dict[str, Any]], status: int = 400):
        super().__init__(error + "".join(f"\n  {d['message']}" for d in details))
        self.error, self.details, self.status = error, details, status

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "details": self.details}


def problem(index: int | None, rule: str, message: str) -> dict[str, Any]:
    return {"index": index, "rule": rule, "message": message}


_RULE = re.compile(r"^(.*) \(rule: (.*)\)$", re.S)


def _from_ingest_error(index: int, exc: IngestError) -> dict[str, Any]:
    """An :class:`IngestError` (``"<where>: <what> (rule: <rule>)"``) as a detail."""
    m = _RULE.match(str(exc))
    return (
        problem(index, m.group(2), m.group(1))
        if m
        else problem(index, "every image decodes completely", str(exc))
    )


_WHITESPACE = str.maketrans("", "", " \t\r\n")


def decode_request(
    images: list[str] | None, image_size: int, limits: Limits
) -> tuple[np.ndarray, list[str]]:
    """The images (base64 of image files; line breaks and a ``data:`` URL prefix are allowed) as a
    uint8 batch ``(n, image_size, image_size, 3)`` and the SHA-256 of each file; or a
    :class:`RequestError`."""
    if not images:
        raise RequestError(
            "no images",
            [problem(None, "a request has at least one image", "parameters.images is empty")],
        )
    if len(images) > limits.max_images:
        raise RequestError(
            "too many images",
            [
                problem(
                    None,
                    f"a request has at most {limits.max_images} images",
                    f"the request has {len(images)} images",
                )
            ],
        )
    max_b64 = 4 * -(-limits.max_image_bytes // 3)
    size_rule = f"an image has at most {limits.max_image_bytes} bytes"
    arrays, digests, details = [], [], []
    conversions: Counter = Counter()
    for i, text in enumerate(images):
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        text = text.translate(_WHITESPACE)  # line breaks, as `base64` writes them without -w0
        if len(text) > max_b64 + 4:
            details.append(problem(i, size_rule, f"image {i}: about {len(text) * 3 // 4} bytes"))
            continue
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            details.append(
                problem(
                    i,
                    "an image is base64 (standard alphabet, with padding)",
                    f"image {i}: not base64 ({exc})",
                )
            )
            continue
        if len(data) > limits.max_image_bytes:
            details.append(problem(i, size_rule, f"image {i}: {len(data)} bytes"))
            continue
        try:
            arrays.append(
                decode_image(
                    data, image_size, conversions, f"image {i}", FORMATS, limits.max_pixels
                )
            )
        except IngestError as exc:
            details.append(_from_ingest_error(i, exc))
            continue
        digests.append(hashlib.sha256(data).hexdigest())
    if details:
        raise RequestError(
            f"{len(details)} of {len(images)} image(s) break a rule; nothing was classified",
            details,
        )
    return np.stack(arrays), digests


def check_explain(explain: int | None, n_images: int) -> None:
    if explain is not None and not 0 <= explain < n_images:
        raise RequestError(
            "bad explain",
            [
                problem(
                    None,
                    f"explain is the index of one of the request's {n_images} image(s)",
                    f"explain={explain}",
                )
            ],
        )


# The deployment's /invoke decodes a request once and hands the batch to the pipeline's step in
# the same thread (the step runs inline there); the run's parameters then hold only each image's
# SHA-256 (``sha256:<hex>``), not the image.
_HANDED_OVER: contextvars.ContextVar[tuple[tuple[str, ...], np.ndarray] | None] = (
    contextvars.ContextVar("bloodcell_request_images", default=None)
)


def reference(digest: str) -> str:
    return f"sha256:{digest}"


@contextlib.contextmanager
def handed_over(refs: list[str], batch: np.ndarray) -> Iterator[None]:
    token = _HANDED_OVER.set((tuple(refs), batch))
    try:
        yield
    finally:
        _HANDED_OVER.reset(token)


def images_for(
    images: list[str] | None, image_size: int, limits: Limits
) -> tuple[np.ndarray, list[str]]:
    """The batch and digests for a step's ``images`` parameter: the batch handed over for these
    references, or else the images themselves (base64), decoded here (a run outside the service)."""
    held = _HANDED_OVER.get()
    if held is not None and images and held[0] == tuple(images):
        return held[1], [ref.split(":", 1)[1] for ref in images]
    return decode_request(images, image_size, limits)


@dataclass
class ServingModel:
    """A loaded model and what the service says about it. ``predict`` is the model's call traced
    once for any batch size (``tf.function``), safe to call from several threads; ``features``
    the same for the referral rule's per-view features (None: a model from before the rule)."""

    model: Any
    classes: list[str]
    image_size: int
    name: str
    version: str | None
    stage: str | None
    limits: Limits = field(default_factory=Limits)
    predict: Any = None
    features: Any = None
    # the rule's options and weights, the head's kernel and bias: read from the model once, at load
    rule: tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray, np.ndarray] | None = None

    @classmethod
    def load(
        cls, model: Any, name: str, version: str | None, stage: str | None, limits: Limits
    ) -> ServingModel:
        from bloodcell.model.predict import model_classes
        from bloodcell.model.referral import Scorer, rule_layer, rule_weights

        size = int(model.input_shape[1])
        served = cls(
            model, model_classes(model), size, name, version, stage, limits, _traced(model, size)
        )
        layer = rule_layer(model)
        if layer is not None:
            scorer = Scorer(model)
            served.features = _traced(scorer.model, size)
            served.rule = (*rule_weights(layer), *scorer.head_weights())
        # trace and warm up now, not on the first request
        warm = np.zeros((1, size, size, 3), np.uint8)
        served.predict(warm)
        served.score(warm)
        return served

    def score(self, batch: np.ndarray) -> Any:
        """``bloodcell.model.referral.Scores`` of a batch: what ``bloodcell predict`` gives for
        it."""
        from bloodcell.model.referral import from_rule, predates

        if self.rule is None:
            return predates(self.predict(batch))
        return from_rule(self.features(batch), batch, *self.rule)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "image_size": self.image_size,
            "classes": self.classes,
        }

    def classify(
        self, batch: np.ndarray, digests: list[str], explain: int | None = None
    ) -> dict[str, Any]:
        """``{"model": ..., "predictions": [...], "model_ms": ...}``: per image its class,
        confidence, status and reason (``bloodcell.model.referral``), top 3 and every class's
        probability; ``occlusion`` on the image ``explain`` names; the milliseconds the model
        took."""
        check_explain(explain, len(batch))
        started = time.perf_counter()
        scores = self.score(batch)
        probs = scores.probabilities
        rows = answer_rows(probs, self.classes, digests, scores.status, scores.reason)
        if explain is not None:
            rows[explain]["occlusion"] = occlusion_map(
                self.predict, batch[explain], int(probs[explain].argmax())
            )
        return {
            "model": self.describe(),
            "predictions": rows,
            "model_ms": round(1000 * (time.perf_counter() - started), 1),
        }


def _traced(model: Any, size: int) -> Any:
    """``model``'s call traced once for any batch size, as a NumPy function of uint8 batches (a
    tuple of arrays for a model with several outputs)."""
    import tensorflow as tf

    fn = tf.function(
        lambda x: model(x, training=False),
        reduce_retracing=True,
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )

    def call(batch: np.ndarray) -> Any:
        out = fn(tf.constant(batch, tf.float32))
        return (
            tuple(np.asarray(o) for o in out) if isinstance(out, (list, tuple)) else np.asarray(out)
        )

    return call


def answer_rows(
    probs: np.ndarray, classes: list[str], digests: list[str], status: list[str], reason: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for i, p in enumerate(np.asarray(probs, dtype=np.float64)):
        order = np.argsort(-p, kind="stable")
        rows.append(
            {
                "index": i,
                "class": classes[order[0]],
                "confidence": float(p[order[0]]),
                "status": status[i],
                "reason": reason[i],
                "top3": [{"class": classes[k], "probability": float(p[k])} for k in order[:3]],
                "probabilities": {c: float(v) for c, v in zip(classes, p)},
                "sha256": digests[i],
            }
        )
    return rows


def occlusion_map(
    predict, image: np.ndarray, class_index: int, patch: int | None = None
) -> dict[str, Any]:
    """Where the model looked, measured on the model itself: cover a square (``patch`` px, default
    a quarter of the side) with the image's mean colour, at every half-patch step, and record how
    much the probability of ``class_index`` falls. ``map`` is that fall averaged over the squares
    that cover each ``cell`` x ``cell`` block (positive: the block supports the class)."""
    side = image.shape[0]
    patch = patch or max(4, side // 4)
    step = max(1, patch // 2)
    starts = list(range(0, side - patch + 1, step))
    if starts[-1] != side - patch:
        starts.append(side - patch)
    fill = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    covered = np.repeat(image[None], len(starts) ** 2 + 1, axis=0)
    boxes = [(y, x) for y in starts for x in starts]
    for j, (y, x) in enumerate(boxes, start=1):
        covered[j, y : y + patch, x : x + patch] = fill
    p = predict(covered)[:, class_index]
    fall = np.zeros((side, side))
    count = np.zeros((side, side))
    for j, (y, x) in enumerate(boxes, start=1):
        fall[y : y + patch, x : x + patch] += p[0] - p[j]
        count[y : y + patch, x : x + patch] += 1
    fall /= np.maximum(count, 1)
    cells = -(-side // step)
    pad = cells * step - side
    fall = (
        np.pad(fall, ((0, pad), (0, pad)), mode="edge")
        .reshape(cells, step, cells, step)
        .mean(axis=(1, 3))
    )
    return {
        "class_index": class_index,
        "probability": float(p[0]),
        "patch": patch,
        "cell": step,
        "evaluations": len(boxes),
        "fill": "the image's mean colour",
        "map": np.round(fall, 4).tolist(),
    }
