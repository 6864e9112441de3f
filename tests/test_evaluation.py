from __future__ import annotations

import numpy as np

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
