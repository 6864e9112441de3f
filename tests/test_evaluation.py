from __future__ import annotations

import numpy as np
import pytest

from bloodcell.evaluation.report import EvaluationReport, add_white_noise, set_metrics


def test_white_noise_has_the_requested_sigma():
    flat = np.full((8, 96, 96, 3), 128, np.uint8)
    noisy = add_white_noise(flat, 25.0, seed=1)
    assert noisy.dtype == np.uint8
    assert abs(float(noisy.astype(float).std()) - 25.0) < 0.5
    assert np.array_equal(noisy, add_white_noise(flat, 25.0, seed=1))


def test_metrics_and_report_round_trip():
    names = ["a", "b", "c"]
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = set_metrics(y, p, names)
    assert m.accuracy == 4 / 6
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.per_class["b"]["precision"] == 2 / 3 and m.per_class["b"]["recall"] == 1.0
    report = EvaluationReport(class_names=names, sets={"plain": m})
    again = EvaluationReport.from_dict(report.to_dict())
    assert again == report
    assert "| plain | 6 | 0.6667 |" in report.markdown()


def test_corruptions_keep_shape_and_grow_with_severity(sample_dataset):
    from bloodcell.evaluation.corruptions import SEVERITIES, corrupt

    x = sample_dataset.images[:8]
    for name in SEVERITIES:
        diffs = []
        for severity in (1, 2, 3):
            y = corrupt(x, name, severity)
            assert y.shape == x.shape and y.dtype == np.uint8, name
            diffs.append(np.abs(y.astype(int) - x.astype(int)).mean())
        assert 0 < diffs[0] <= diffs[1] <= diffs[2], (name, diffs)
    gray = corrupt(x, "saturation", 3)
    assert np.abs(gray[..., 0].astype(int) - gray[..., 1]).max() <= 1  # saturation 0: gray
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity must be 1..3"):
        corrupt(x, "blur", 4)


def test_corruption_table_in_the_report(sample_dataset):
    import keras

    from bloodcell.evaluation.report import EvaluationReport, evaluate_model

    inputs = keras.Input((96, 96, 3))
    brightness = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8, activation="softmax")(brightness))
    report = evaluate_model(model, sample_dataset, noise_sigma=10.0, corruption_samples=16)
    assert len(report.corruptions) == 24 and {r["n"] for r in report.corruptions} == {16}
    clean = [r for r in report.corruptions if r["severity"] == 0]
    assert len({r["accuracy"] for r in clean}) == 1 and all(r["setting"] is None for r in clean)
    assert "| blur |" in report.markdown()
    lines = report.log_lines()  # the step's log: one line a set, a trust figure, a corruption
    assert lines[0].startswith(f"plain test accuracy {report.sets['plain'].accuracy:.4f}")
    assert sum("severity" in line for line in lines) == 18 and len(lines) == 2 + 2 + 18
    again = EvaluationReport.from_dict(report.to_dict())
    assert again.corruptions == report.corruptions
    assert (
        evaluate_model(model, sample_dataset, noise_sigma=0, corruption_samples=None).corruptions
        == []
    )


def test_corruption_table_read_in_chunks_is_the_table_read_whole(sample_dataset):
    """The table goes ``chunk`` images at a time (bounded memory at any sample size); its figures
    are those of the whole sample at once, with a chunk that splits the classes unevenly."""
    import keras

    from bloodcell.evaluation.report import corruption_table

    keras.utils.set_random_seed(3)
    inputs = keras.Input((96, 96, 3))
    pooled = keras.layers.AveragePooling2D(24)(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(
        inputs, keras.layers.Dense(8, activation="softmax")(keras.layers.Flatten()(pooled))
    )
    model.compile("adam", "sparse_categorical_crossentropy")  # colour and layout at 4x4: some right
    model.fit(
        sample_dataset.images.astype("float32"),
        sample_dataset.labels,
        epochs=30,
        batch_size=50,
        verbose=0,
    )
    x, y = sample_dataset.images[::6], sample_dataset.labels[::6]
    whole = corruption_table(model, x, y, ["blur", "saturation"])
    assert corruption_table(model, x, y, ["blur", "saturation"], chunk=7) == whole
    assert len({r["accuracy"] for r in whole}) > 2  # the model's answers move with the corruption


def _lab(tmp_path, name: str, folders: dict[str, str], sample_dir, per_class: int = 4):
    """A folder of another "lab": ``folders`` maps its folder names to the sample class they
    copy."""
    import shutil

    root = tmp_path / name
    for folder, cls in folders.items():
        (root / folder).mkdir(parents=True)
        for f in sorted((sample_dir / cls).iterdir())[:per_class]:
            shutil.copy(f, root / folder / f.name)
    return root


def test_other_labs_sets_are_scored_by_class_name(tmp_path, sample_dir, sample_dataset):
    """Each external set gets n, accuracy, balanced accuracy over the classes it has, per-class
    recall and a confusion matrix, its labels matched to the model's classes by name (a lab's own
    folder names through its class_map); a class the model lacks is a clear error naming it."""
    import keras

    from bloodcell.data.ingest import read_external
    from bloodcell.evaluation.report import EvaluationReport, evaluate_model
    from bloodcell.model.build import build_model

    keras.utils.set_random_seed(0)
    model = build_model("custom_cnn", sample_dataset.class_names, 96, filters=[8], dense_units=8)
    lab_a = _lab(
        tmp_path, "lab_a", {"Neutrophils": "neutrophil", "lymphocyte": "lymphocyte"}, sample_dir
    )
    lab_b = _lab(
        tmp_path,
        "lab_b",
        {"monocyte": "monocyte", "basophil": "basophil", "eosinophil": "eosinophil"},
        sample_dir,
        2,
    )
    external = read_external(
        [
            {"name": "a", "path": str(lab_a), "class_map": {"Neutrophils": "neutrophil"}},
            {"name": "b", "path": str(lab_b)},
        ],
        image_size=96,
    )
    assert len(external) == 14 and external.class_names == [
        "basophil",
        "eosinophil",
        "lymphocyte",
        "monocyte",
        "neutrophil",
    ]
    report = evaluate_model(
        model,
        sample_dataset.subset(np.arange(0, 400, 20)),
        corruption_samples=None,
        external=external,
    )
    a, b = report.external["a"], report.external["b"]
    assert a.n == 8 and b.n == 6 and a.present == ["lymphocyte", "neutrophil"]
    predicted = model.predict(external.images[:8].astype("float32"), verbose=0).argmax(1)
    truth = np.array(
        [sample_dataset.class_names.index(external.class_names[y]) for y in external.labels[:8]]
    )
    assert sorted(set(truth)) == [4, 6]  # lymphocyte, neutrophil
    assert a.accuracy == pytest.approx(np.mean(predicted == truth))
    recalls = [np.mean(predicted[truth == c] == c) for c in (4, 6)]
    assert a.balanced_accuracy == pytest.approx(
        np.mean(recalls)
    )  # over the 2 classes present, not all 8
    assert sum(map(sum, a.confusion)) == 8 and a.per_class["platelet"]["support"] == 0
    assert report.summary()["external_b_balanced_accuracy"] == b.balanced_accuracy
    assert (
        "| a | 8 |" in report.markdown() and EvaluationReport.from_dict(report.to_dict()) == report
    )

    five = build_model(
        "custom_cnn",
        ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"][:4],
        96,
        filters=[8],
        dense_units=8,
    )
    test = sample_dataset.subset(np.flatnonzero(sample_dataset.labels == 0))
    with pytest.raises(
        ValueError,
        match=r"external set 'a': class\(es\) \['neutrophil'\] are not among the model's classes",
    ):
        evaluate_model(five, test, corruption_samples=None, external=external)


def test_noise_drawn_chunk_by_chunk_is_the_noise_drawn_at_once(sample_dataset):
    """evaluate adds the noise 4,096 test images at a time from one generator: the same images
    as adding it to all of them at once, so the noisy figures do not depend on the chunking."""
    images = sample_dataset.images[:50]
    rng = np.random.default_rng(7)
    chunked = np.concatenate(
        [add_white_noise(images[a : a + 16], 25.0, rng) for a in range(0, 50, 16)]
    )
    assert np.array_equal(chunked, add_white_noise(images, 25.0, 7))
