"""The auxiliary subtype head: subtypes read from PBC file names, trained beside the classes,
left out of the model that is shipped."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bloodcell.dataset import Dataset
from bloodcell.models import build_model
from bloodcell.subtypes import fine_classes, fine_targets, subtype_of
from bloodcell.training import TrainConfig, train_model

PBC = {"ig": ["MY", "MMY", "PMY"], "neutrophil": ["BNE", "SNE"]}


def test_subtype_is_the_file_name_prefix_and_generated_samples_keep_their_sources():
    assert subtype_of("ig/MY_1234.jpg") == "MY"
    assert subtype_of("neutrophil/bne_77.png#aug3") == "BNE"
    assert subtype_of("sub\\dir\\ig\\PMY_1.jpg") == "PMY"
    assert subtype_of("cells.npz:17") == ""
    assert subtype_of("ig/IG_5.jpg") == "IG"


def test_fine_classes_and_targets_on_the_shipped_sample(sample_dataset):
    fine = fine_classes(sample_dataset, PBC)
    assert fine == ["basophil", "eosinophil", "erythroblast", "ig/MY", "ig/MMY", "ig/PMY", "lymphocyte",
                    "monocyte", "neutrophil/BNE", "neutrophil/SNE", "platelet"]
    t = fine_targets(sample_dataset, fine)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    for i, sid in enumerate(sample_dataset.ids):
        cls, name = sid.split("/")
        if name.startswith("IG_"):  # PBC's generic immature granulocytes: spread over MY, MMY, PMY
            np.testing.assert_allclose(t[i, 3:6], 1 / 3)
        elif name.startswith("NEUTROPHIL_"):
            np.testing.assert_allclose(t[i, 8:10], 1 / 2)
        else:
            column = fine.index(f"{cls}/{name.split('_')[0]}" if cls in PBC else cls)
            assert t[i, column] == 1.0, sid
    # the coarse class is always the sum of its fine columns
    coarse = {name: [j for j, f in enumerate(fine) if f.split("/")[0] == name] for name in sample_dataset.class_names}
    for c, name in enumerate(sample_dataset.class_names):
        np.testing.assert_allclose(t[sample_dataset.labels == c][:, coarse[name]].sum(axis=1), 1.0)


def test_unknown_class_is_a_clear_error_and_missing_subtypes_are_left_out(sample_dataset, caplog):
    with pytest.raises(ValueError, match=r"subtypes: unknown class\(es\) \['granulocyte'\]"):
        fine_classes(sample_dataset, {"granulocyte": ["MY", "MMY"]})
    with caplog.at_level(logging.WARNING, logger="bloodcell.subtypes"):
        fine = fine_classes(sample_dataset, {"ig": ["MY", "MMY", "XY"], "neutrophil": ["BNE", "ZZ"]})
    assert "ig/XY" not in fine and "neutrophil" in fine  # neutrophil kept whole: one subtype left
    assert [f for f in fine if "/" in f] == ["ig/MY", "ig/MMY"]
    assert "'XY_'" in caplog.text and "'ZZ_'" in caplog.text
    with pytest.raises(ValueError, match="subtypes must map class names to lists"):
        TrainConfig.from_dict({"subtypes": ["MY", "MMY"]})
    with pytest.raises(ValueError, match="subtype_loss_weight must be above 0"):
        TrainConfig.from_dict({"subtypes": PBC, "subtype_loss_weight": 0})


def test_data_named_otherwise_trains_without_a_subtype_head(sample_dataset):
    npz_like = Dataset(sample_dataset.images, sample_dataset.labels, [f"cells.npz:{i}" for i in range(len(sample_dataset))])
    assert fine_classes(npz_like, PBC) == []


def test_subtype_head_is_trained_beside_the_classes_and_left_out_of_the_model(sample_dataset):
    import keras

    tr = sample_dataset.subset(np.arange(0, 400, 2))
    va = sample_dataset.subset(np.arange(1, 400, 8))
    model = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
    before = {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}
    cfg = TrainConfig.from_dict({"epochs": 4, "batch_size": 25, "learning_rate": 1e-3, "verbose": 0,
                                 "recalibrate_samples_per_epoch": 50, "subtypes": PBC})
    history = train_model(model, tr, va, cfg)
    # the classes' accuracy under its usual names, and a loss for each head
    assert {"accuracy", "val_accuracy", "probabilities_loss", "subtype_loss", "val_subtype_loss"} <= set(history)
    assert len(history["val_accuracy"]) == 4
    assert history["subtype_loss"][-1] < history["subtype_loss"][0]
    # the model that comes back is the 8-class model, trained (its weights moved), without the head
    assert [layer.name for layer in model.layers if layer.name == "subtype"] == []
    assert model.output_shape == (None, 8)
    assert any(not np.array_equal(before[w.path], keras.ops.convert_to_numpy(w)) for w in model.weights)
    p = model.predict(va.images.astype("float32"), verbose=0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
