"""The referral rule: calibrated probabilities, a status and reason for every image, the rule
inside the exported model; and the measurements behind it (bloodcell.evaluation.reliability)."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcell.evaluation.reliability import bootstrap_balanced_accuracy, reliability, risk_coverage


@pytest.fixture(scope="module")
def trained(sample_dataset):
    """A small CNN trained on 320 sample cells (8 classes) and the 80 held back, as (model, train,
    val)."""
    import keras

    from bloodcell.data.split import stratified_split
    from bloodcell.model.build import build_model

    keras.utils.set_random_seed(0)
    train, val, _ = stratified_split(sample_dataset, 0.2, 0.05, seed=0)
    model = build_model("custom_cnn", train.class_names, 96, filters=[16, 32, 64], dense_units=64)
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    x = np.asarray(train.images, np.float32)
    model.fit(
        np.concatenate([x, x[:, ::-1]]),
        np.concatenate([train.labels] * 2),
        epochs=12,
        batch_size=32,
        verbose=0,
    )
    return model, train, val


@pytest.fixture(scope="module")
def shipped(trained):
    from bloodcell.model.packaging import with_tta
    from bloodcell.model.referral import ReferralConfig, fit_referral

    model, train, val = trained
    return fit_referral(with_tta(model), train, val, ReferralConfig(target_accuracy=0.9))


def test_generated_non_cells_are_flagged_and_cells_are_not_called_non_cells(
    shipped, sample_dataset
):
    from bloodcell.evaluation.noncells import non_cell_images
    from bloodcell.model.referral import score

    model, rule = shipped
    # tiles of several cells are left to benchmarks/referral.py: they need a model that knows cells
    # well, not one trained for seconds on 320 of them; every other kind is flagged by any model
    images = non_cell_images(96, 8, seed=1)
    for kind, batch in images.items():
        s = score(model, batch)
        assert "accept" not in s.status, (kind, s.reason)
    assert set(score(model, images["blank"]).status) == {"not_a_cell"}
    cells = score(model, sample_dataset.images)
    assert cells.status.count("not_a_cell") <= 0.01 * len(sample_dataset), cells.reason
    assert rule["review_distance"] < rule["far_distance"] and 0 < rule["confidence_threshold"] <= 1


def test_status_reason_and_check_follow_the_first_rule_that_applies():
    from bloodcell.model.referral import decide

    rule = {
        "confidence_threshold": 0.9,
        "review_distance": 10.0,
        "far_distance": 30.0,
        "pixel_residual": 0.05,
    }
    probs = np.array(
        [
            [0.95, 0.05],
            [0.6, 0.4],
            [0.99, 0.01],
            [0.99, 0.01],
            [0.99, 0.01],
            [0.99, 0.01],
            [0.99, 0.01],
        ]
    )
    dist = np.array([5.0, 5.0, 12.0, 40.0, 5.0, 5.0, 5.0])
    pixels = np.array([0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.08])
    blank = [None, None, None, None, "a blank image (pixel std 0.0 < 2)", None, None]
    stain = [
        None,
        None,
        None,
        None,
        None,
        "stain unlike the training cells (mean_b 90 outside 160-230)",
        None,
    ]
    status, reason, check = decide(probs, dist, pixels, blank, stain, rule)
    assert status == ["accept", "review", "review", "not_a_cell", "not_a_cell", "review", "review"]
    assert check == ["", "confidence", "distance", "far", "blank", "stain", "pixels"]
    assert reason[6] == "unlike the training images (thumbnail residual 0.080 > 0.050)"
    assert reason[1] == "confidence 0.60 below 0.90"
    assert reason[2] == "unusual for the training cells (distance 12.0 > 10.0)"
    assert reason[3] == "unlike any training cell (distance 40.0 > 30.0)"


def test_the_rule_travels_in_the_exported_model(shipped, sample_dataset, tmp_path):
    from bloodcell.model.predict import load_model, predict_table
    from bloodcell.model.referral import describe, score

    model, rule = shipped
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = load_model(path)  # safe mode, no other file
    assert describe(loaded) == rule
    images = sample_dataset.images[:40]
    a, b = score(model, images), score(loaded, images)
    assert a.status == b.status and a.reason == b.reason
    np.testing.assert_allclose(a.distance, b.distance, rtol=1e-5)
    # the model's own output is the calibrated probabilities that the rule reads
    np.testing.assert_allclose(
        loaded.predict(np.asarray(images, np.float32), verbose=0), b.probabilities, atol=1e-5
    )
    table = predict_table(loaded, images, [str(i) for i in range(40)])
    assert table.status.tolist() == b.status and table.reason.tolist() == b.reason
    # and loads in a fresh process that imported nothing else of the project
    import subprocess
    import sys

    probe = f"from bloodcell.model.predict import load_model; print(load_model({str(path)!r}).name)"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == loaded.name, res.stderr[-2000:]


def test_calibration_lowers_the_error_of_an_overconfident_model(trained, sample_dataset):
    """Logits x4 make the model over-confident; a temperature fitted on one half of held-out cells
    brings the calibration error on the other half back down."""
    from bloodcell.model.packaging import with_tta
    from bloodcell.model.referral import Scorer, fit_temperature, view_probabilities

    model, train, val = trained
    scorer = Scorer(with_tta(model))
    kernel, bias = scorer.head_weights()
    kernel, bias = 4 * kernel, 4 * bias
    feats = scorer.view_features(val.images)[0]
    half = np.arange(len(val)) % 2 == 0
    t = fit_temperature(feats[half], val.labels[half], kernel, bias)
    assert t > 1.5
    held = ~half

    def ece(temperature: float) -> float:
        p = view_probabilities(feats[held], kernel, bias, temperature)
        return reliability(p.max(axis=1), p.argmax(axis=1) == val.labels[held])["ece"]

    assert ece(t) < 0.75 * ece(1.0), (ece(t), ece(1.0))


def test_a_model_from_before_the_rule_is_accepted_with_the_reason(
    trained, sample_dataset, small_tree, tmp_path
):
    from bloodcell.cli import main as cli
    from bloodcell.model.predict import predict_table
    from bloodcell.model.referral import PREDATES

    model, _, _ = trained
    table = predict_table(model, sample_dataset.images[:5], list("abcde"))
    assert set(table.status) == {"accept"} and set(table.reason) == {PREDATES}
    path = tmp_path / "old.keras"
    model.save(path)
    out = tmp_path / "p.csv"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli(["predict", str(path), str(small_tree), "--output", str(out)]) == 0
    assert printed.getvalue().strip().splitlines()[-1].startswith(f"warning: {PREDATES}")


def test_predict_warns_when_most_of_a_batch_is_unlike_the_training_cells(shipped, tmp_path):
    from PIL import Image

    from bloodcell.cli import main as cli
    from bloodcell.evaluation.noncells import non_cell_images

    model, _ = shipped
    path = tmp_path / "m.keras"
    model.save(path)
    folder = tmp_path / "fields"
    folder.mkdir()
    for kind, batch in non_cell_images(96, 2, seed=2).items():
        for i, image in enumerate(batch):
            Image.fromarray(image).save(folder / f"{kind}{i}.png")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli(["predict", str(path), str(folder), "--output", str(tmp_path / "p.csv")]) == 0
    last = printed.getvalue().strip().splitlines()[-1]
    assert (
        last.startswith("warning: this batch looks unlike the training lab")
        and "bloodcell adapt" in last
    )


def test_the_threshold_is_the_lowest_that_keeps_the_target_accuracy():
    from bloodcell.model.referral import NOTHING, confidence_threshold

    conf = np.array([0.99, 0.98, 0.97, 0.96, 0.9, 0.8, 0.7])
    correct = np.array([1, 1, 1, 1, 0, 1, 0], bool)
    t, coverage, acc = confidence_threshold(conf, correct, 0.8)
    assert t == 0.8 and coverage == pytest.approx(6 / 7) and acc == pytest.approx(5 / 6)
    assert confidence_threshold(conf, correct, 1.0)[0] == 0.96
    assert confidence_threshold(conf[4:5], correct[4:5], 0.9)[0] == NOTHING


def test_reliability_and_risk_coverage_on_known_values():
    # ten cells at confidence 0.9, of which 6 right: calibration error 0.3
    r = reliability(np.full(10, 0.9), np.arange(10) < 6)
    assert r["ece"] == pytest.approx(0.3) and r["count"] == [10]
    assert reliability(np.array([0.55, 0.95]), np.array([False, True]))["ece"] == pytest.approx(
        (0.55 + 0.05) / 2
    )
    curve = risk_coverage(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, True, False, True]))
    assert curve["coverage_at_99"] == 0.5 and curve["aurc"] == pytest.approx(
        np.mean([0, 0, 1 / 3, 1 / 4])
    )


def test_bootstrap_interval_holds_the_point_and_widens_for_few_cells():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [100, 100, 2])
    pred = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 3)
    pred[-2:] = [2, 0]  # of the two cells of class 2, one right
    low, high = bootstrap_balanced_accuracy(y, pred)
    point = np.mean([np.mean(pred[y == c] == c) for c in range(3)])
    assert low < point < high and high - low > 0.2  # two cells of one class: a wide interval
    low2, high2 = bootstrap_balanced_accuracy(y[:200], pred[:200])
    assert high2 - low2 < high - low
