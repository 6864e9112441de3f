"""Model builders and the helpers that package a model. Every model takes RGB images with values
0..255 (preprocessing is inside) and outputs one probability per class. The builders themselves
are ``bloodcell.model.cnn`` (the custom CNN) and ``bloodcell.model.transfer`` (pretrained
backbones); importing this module registers every layer the project's saved models carry."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from bloodcell.model.cnn import build_custom_cnn
from bloodcell.model.transfer import build_transfer


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside ``model``, depth first, the layers of nested models (a transfer model's
    backbone, the model inside a TTA wrapper) included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out += all_layers(layer)
    return out


def network_of(model: keras.Model) -> keras.Model:
    """The trainable network inside a shipped model (inside its TTA wrapper, if it has one)."""
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return inner[0] if model.name.endswith("_tta") and len(inner) == 1 else model


def output_layer(model: keras.Model) -> keras.layers.Layer:
    """The model's softmax output layer ``probabilities``."""
    try:
        return model.get_layer("probabilities")
    except ValueError:
        raise ValueError(
            f"{model.name} has no output layer named 'probabilities' to shift"
        ) from None


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


def build_model(
    architecture: str,
    classes: int | Sequence[str],
    image_size: int,
    *,
    seed: int | None = None,
    **kwargs: Any,
) -> keras.Model:
    """Build the model named ``architecture`` with the given keyword arguments. ``classes``: the
    class names (the model then carries them: ``class_names_of``), or just their number.
    ``seed``: seeds Keras, NumPy and Python first, so the initial weights are the seed's alone (not
    whatever the process drew before)."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
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
    ``bloodcell.model.build`` imported (or ``custom_objects={"ClassNames": ClassNames}``)."""

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
        raise ValueError(
            f"{model.name} outputs {model.output_shape[-1]} classes, not the {len(class_names)} of "
            f"{list(class_names)}"
        )
    outputs = ClassNames(class_names, name="class_names")(model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name)


def class_names_of(model: keras.Model) -> list[str] | None:
    """The class names a model carries (anywhere inside it, e.g. inside a TTA wrapper), or None."""
    for layer in all_layers(model):
        if isinstance(layer, ClassNames):
            return list(layer.class_names)
    return None
