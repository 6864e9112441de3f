"""Lab shift: the cell framing inside the model, and adapting a model to a new lab with a few
labelled cells (a "lab" made from the sample: the same cells under another stain)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bloodcell.data.dataset import Dataset
from bloodcell.model.build import build_model, class_names_of


def _other_lab(ds: Dataset) -> Dataset:
    """``ds`` as another lab would image it: a yellow cast, more red, a darker exposure."""
    x = ds.images.astype(np.float32) * np.array([1.0, 0.9, 0.55], np.float32) * 0.85
    return Dataset(
        images=np.clip(x, 0, 255).astype(np.uint8),
        labels=ds.labels,
        ids=ds.ids,
        class_names=ds.class_names,
        info={"source": "other lab"},
    )


def test_split_for_adaptation_keeps_cells_back_to_score(sample_dataset):
    from bloodcell.model.adaptation import split_for_adaptation

    few = sample_dataset.subset(
        np.concatenate(
            [np.flatnonzero(sample_dataset.labels == c)[:n] for c, n in ((0, 1), (1, 3), (2, 50))]
        )
    )
    adapt, rest = split_for_adaptation(few, 5, seed=0)
    assert np.bincount(adapt.labels, minlength=3).tolist() == [0, 2, 5]  # never a class's last cell
    assert sorted(adapt.ids + rest.ids) == sorted(few.ids) and not set(adapt.ids) & set(rest.ids)
    assert (
        split_for_adaptation(few, 5, seed=0)[0].ids
        == adapt.ids
        != split_for_adaptation(few, 5, seed=1)[0].ids
    )


@pytest.fixture(scope="module")
def home_model(sample_dataset):
    """A small model trained on the sample (the home lab), shipped as fine_tune ships it."""
    from bloodcell.model.packaging import package_model
    from bloodcell.model.training import TrainConfig, train_model

    keras.utils.set_random_seed(0)
    model = build_model(
        "custom_cnn", sample_dataset.class_names, 96, filters=[16, 32, 64], dense_units=32
    )
    cfg = TrainConfig.from_dict(
        {
            "epochs": 8,
            "swa_epochs": 2,
            "batch_size": 32,
            "verbose": 0,
            "mixed_precision": False,
            "recalibrate_samples_per_epoch": 128,
        }
    )
    train_model(model, sample_dataset, sample_dataset.subset(np.arange(0, 400, 10)), cfg)
    shipped, _ = package_model(
        model, sample_dataset, sample_dataset, tta=True, prior_correction=0.0
    )
    return shipped


def test_adaptation_to_a_new_lab_with_five_cells_a_class(sample_dataset, home_model):
    """The other lab has 4 of the 8 classes; 5 labelled cells each. The adapted model keeps all 8
    classes and its TTA, and scores the lab's other cells better than the home model did."""
    from bloodcell.evaluation.report import set_metrics
    from bloodcell.model.adaptation import adapt_model, recalibrated_on, split_for_adaptation

    wbc = [
        sample_dataset.class_names.index(c)
        for c in ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
    ]
    lab = _other_lab(sample_dataset.subset(np.flatnonzero(np.isin(sample_dataset.labels, wbc))))
    cells, rest = split_for_adaptation(lab, 5, seed=0)

    def balanced(model):
        predicted = model.predict(rest.images.astype(np.float32), verbose=0).argmax(1)
        return set_metrics(rest.labels, predicted, sample_dataset.class_names).balanced_accuracy

    adapted, info = adapt_model(home_model, cells, replay=sample_dataset)
    assert (
        info["lab_cells"] == 20
        and info["replayed"] == 8 * 20
        and info["lab_classes"] == sorted(sample_dataset.class_names[i] for i in wbc)
    )
    assert adapted.name.endswith("_tta") and class_names_of(adapted) == sample_dataset.class_names
    before, after = balanced(home_model), balanced(adapted)
    assert after > before + 0.1, (before, after)
    assert (
        balanced(recalibrated_on(home_model, lab)) != before
    )  # batch norm from the lab's own images moves it
    with pytest.raises(
        ValueError,
        match=r"batch norm from the lab's images: 20 image\(s\) given, at least 32 are needed",
    ):
        recalibrated_on(home_model, cells)
    other = Dataset(
        images=cells.images,
        labels=np.zeros(len(cells), np.int64),
        ids=cells.ids,
        class_names=["macrophage"],
    )
    with pytest.raises(
        ValueError,
        match=r"adaptation data: class\(es\) \['macrophage'\] are not among the model's classes",
    ):
        adapt_model(home_model, other)


def test_unlabelled_cells_cannot_adapt_a_model_without_batch_norm(sample_dataset, tmp_path):
    """Group norm has no statistics to take from a lab's cells: recalibration refuses the model
    with the rule and the way out, the model artifact records it (the CLI checks that before any
    run), and adapting with labels says that nothing was recalibrated."""
    from bloodcell.model.adaptation import (
        AdaptConfig,
        adapt_model,
        recalibrated_on,
        split_for_adaptation,
    )
    from materializers.keras_materializer import KerasModelMaterializer

    model = build_model(
        "custom_cnn",
        sample_dataset.class_names,
        96,
        filters=[8, 16],
        dense_units=16,
        norm="group_ws",
    )
    with pytest.raises(
        ValueError,
        match=r"no batch-norm layer .* adapt it with a few labelled cells a class "
        r"\(`bloodcell adapt` without --unlabelled\)",
    ):
        recalibrated_on(model, sample_dataset)
    assert KerasModelMaterializer(str(tmp_path)).extract_metadata(model)["batch_norm_layers"] == 0
    cells, _ = split_for_adaptation(_other_lab(sample_dataset), 2, seed=0)
    _, info = adapt_model(model, cells, cfg=AdaptConfig(epochs=1, replay_per_class=0))
    assert info["recalibrate"] == "none (the model has no batch norm)"


def _disc(radius: float, centre: tuple[int, int], size: int = 96) -> np.ndarray:
    """A pale image with one dark, stained-looking disc (a nucleus)."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), (230, 200, 210), np.float32)
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = (90, 40, 120)
    return image


def test_cell_framing_brings_every_nucleus_to_one_size_in_the_centre():
    """A small nucleus off-centre (a smear seen at low magnification) and a big one (a cell that
    fills the frame) come out centred and the same size: the framing zooms in and out."""
    from bloodcell.model.normalize import CellFraming

    framing = CellFraming(nucleus=0.3)
    x = np.stack([_disc(9, (40, 55)), _disc(28, (48, 48)), _disc(15, (50, 44))])
    y = np.asarray(framing(x))
    dark = y.mean(axis=-1) < 150
    sides = np.sqrt(dark.sum(axis=(1, 2)))
    np.testing.assert_allclose(sides, 0.3 * 96, rtol=0.15)  # the same nucleus size whatever it was
    for mask in dark:
        ys, xs = np.nonzero(mask)
        assert abs(ys.mean() - 48) < 3 and abs(xs.mean() - 48) < 3  # centred
    assert (
        y.min() >= 0 and y.max() <= 255 and not np.isnan(y).any()
    )  # the uncovered border is filled, not black


def test_a_model_with_framing_saves_and_loads(tmp_path, sample_dataset):
    model = build_model(
        "custom_cnn",
        sample_dataset.class_names,
        96,
        filters=[8, 16],
        dense_units=8,
        input_norm="frame",
    )
    assert model.get_layer("cell_framing") is not None
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = sample_dataset.images[:4].astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="unknown input_norm 'grey'"):
        build_model("custom_cnn", 8, 96, input_norm="grey")
