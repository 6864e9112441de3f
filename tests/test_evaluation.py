from __future__ import annotations

import numpy as np
import pytest

from bloodcell.evaluation import EvaluationReport, add_white_noise, set_metrics


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
    from bloodcell.corruptions import SEVERITIES, corrupt

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

    from bloodcell.evaluation import EvaluationReport, evaluate_model

    inputs = keras.Input((96, 96, 3))
    brightness = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8, activation="softmax")(brightness))
    report = evaluate_model(model, sample_dataset, noise_sigma=10.0, corruption_samples=16)
    assert len(report.corruptions) == 24 and {r["n"] for r in report.corruptions} == {16}
    clean = [r for r in report.corruptions if r["severity"] == 0]
    assert len({r["accuracy"] for r in clean}) == 1 and all(r["setting"] is None for r in clean)
    assert "| blur |" in report.markdown()
    again = EvaluationReport.from_dict(report.to_dict())
    assert again.corruptions == report.corruptions
    assert evaluate_model(model, sample_dataset, noise_sigma=0, corruption_samples=None).corruptions == []
