"""The whole pipeline, run the way users run it (`zenml pipeline run`), in a throw-away ZenML repo.

A copy of the project and of the shipped sample goes to a temporary folder, so that the test can
change an image and a source file there and watch what ZenML's cache does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmarks.sandbox import make_sandbox, zenml

STEPS = ["ingest", "filter_outliers", "split", "rebalance", "train", "fine_tune", "evaluate"]


def _run(proj: Path, config: str = "configs/tiny.yaml", check: bool = True):
    from zenml.client import Client

    res = zenml(proj, "pipeline", "run", "pipelines.training.training_pipeline", "-c", config, check=check)
    run = Client().get_pipeline("training_pipeline").last_run
    return run, res


def _status(run) -> dict[str, str]:
    return {name: str(step.status) for name, step in run.steps.items()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = make_sandbox(tmp_path_factory.mktemp("proj"))
    cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
    cfg["steps"]["train"]["parameters"]["training"].update(epochs=2, recalibrate_samples_per_epoch=64)
    # two epochs make no usable model: floors at zero keep the gates from flaking (they are tested
    # with real floors in test_validation.py and test_failed_expectation_stops_the_run...)
    cfg["steps"]["train"]["parameters"]["min_val_accuracy"] = 0.0
    cfg["steps"]["fine_tune"]["parameters"]["min_val_accuracy"] = 0.0
    cfg["steps"]["evaluate"]["parameters"].update(min_plain_accuracy=0.0, min_noisy_accuracy=0.0)
    (proj / "configs" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return proj


@pytest.fixture(scope="module")
def first_run(project):
    run, _ = _run(project)
    return run


def test_first_run_produces_every_artifact(first_run):
    from bloodcell.dataset import Dataset
    from bloodcell.evaluation import EvaluationReport

    run = first_run
    assert str(run.status) == "completed"
    assert list(run.steps) == STEPS
    assert set(_status(run).values()) == {"completed"}

    dataset_art = run.steps["ingest"].outputs["dataset"][0]
    ds = dataset_art.load()
    assert isinstance(ds, Dataset) and len(ds) == 400
    assert dataset_art.run_metadata["fingerprint"] == ds.fingerprint
    assert dataset_art.run_metadata["class_counts"]["platelet"] == 50
    assert len(dataset_art.visualizations) == 2

    outliers = run.steps["filter_outliers"].outputs["outlier_report"][0]
    assert len(outliers.load().table) == 400 and outliers.run_metadata["removed"] == 0
    assert len(outliers.visualizations) == 3  # removed and borderline contact sheets, removed table

    split_outputs = run.steps["split"].outputs
    parts = {name: split_outputs[name][0].load() for name in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [320, 40, 40]
    assert not set(parts["train"].ids) & set(parts["test"].ids)

    model = run.steps["fine_tune"].outputs["tuned_model"][0].load()
    probs = model.predict(parts["test"].images[:2].astype("float32"), verbose=0)
    assert probs.shape == (2, 8)

    report = run.steps["evaluate"].outputs["evaluation"][0].load()
    assert isinstance(report, EvaluationReport)
    assert set(report.sets) == {"plain", "noisy"}
    assert sum(map(sum, report.sets["plain"].confusion)) == 40
    # the report's accuracy is the model's accuracy on the test split, in inference mode
    acc = (model.predict(parts["test"].images.astype("float32"), verbose=0).argmax(1) == parts["test"].labels).mean()
    assert report.sets["plain"].accuracy == pytest.approx(acc)
    assert run.steps["fine_tune"].run_metadata["skipped"] is True
    assert report.params["quality_gate"] == "passed"

    # every guarded step kept its Great Expectations result as an artifact with a visualization
    for step in ("ingest", "filter_outliers", "split", "rebalance", "train", "fine_tune", "evaluate"):
        art = run.steps[step].outputs[f"{step}_expectations"][0]
        validation = art.load()
        assert validation.success and len(validation.results) >= 1, step
        assert art.run_metadata["failed"] == 0
        assert len(art.visualizations) == 1


def test_exported_model_predicts_like_the_pipeline(first_run, tmp_path):
    """The tuned model, saved as one .keras file, classifies the test split as `evaluate` did."""
    from bloodcell.cli import main as cli

    model = first_run.steps["fine_tune"].outputs["tuned_model"][0].load()
    model.save(tmp_path / "model.keras")
    test = first_run.steps["split"].outputs["test"][0].load()
    np.savez(tmp_path / "test.npz", images=test.images)
    assert cli(["predict", str(tmp_path / "model.keras"), str(tmp_path / "test.npz"), "--output", str(tmp_path / "p.csv")]) == 0
    import pandas as pd

    predicted = pd.read_csv(tmp_path / "p.csv").predicted_class.tolist()
    accuracy = np.mean([p == test.class_names[y] for p, y in zip(predicted, test.labels)])
    report = first_run.steps["evaluate"].outputs["evaluation"][0].load()
    assert accuracy == pytest.approx(report.sets["plain"].accuracy)


def test_caching(project, first_run):
    fingerprint = lambda r: r.steps["ingest"].outputs["dataset"][0].run_metadata["fingerprint"]  # noqa: E731

    # 1. nothing changed: ingest re-reads the data, every later step comes from the cache
    run2, _ = _run(project)
    status = _status(run2)
    assert status["ingest"] == "completed"
    assert all(status[s] == "cached" for s in STEPS[1:]), status
    assert fingerprint(run2) == fingerprint(first_run)

    # 2. one image changed: new fingerprint, every step reruns
    img_path = next((project / "data" / "sample" / "neutrophil").iterdir())
    img = np.asarray(Image.open(img_path)).copy()
    img[40:56, 40:56] = 255 - img[40:56, 40:56]
    Image.fromarray(img).save(img_path, quality=95)
    run3, _ = _run(project)
    status = _status(run3)
    assert fingerprint(run3) != fingerprint(run2)
    assert all(status[s] == "completed" for s in STEPS), status

    # 3. the model-building code (a module the train step imports) changed: train reruns
    models_py = project / "bloodcell" / "models.py"
    models_py.write_text(models_py.read_text().replace('name="head_dense"', 'name="head_dense_v2"'))
    run4, _ = _run(project)
    status = _status(run4)
    assert fingerprint(run4) == fingerprint(run3)
    assert all(status[s] == "cached" for s in ("filter_outliers", "split", "rebalance")), status
    assert all(status[s] == "completed" for s in ("train", "fine_tune", "evaluate")), status
    model = run4.steps["train"].outputs["model"][0].load()
    assert "head_dense_v2" in [layer.name for layer in model.layers]


def test_failed_expectation_stops_the_run_with_a_clear_message(project, first_run):
    cfg = yaml.safe_load((project / "configs" / "tiny.yaml").read_text())
    cfg["steps"]["train"]["parameters"]["min_val_accuracy"] = 1.01
    (project / "configs" / "strict.yaml").write_text(yaml.safe_dump(cfg))
    run, res = _run(project, "configs/strict.yaml", check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "step 'train': 1 expectation(s) failed" in out
    assert "expect_column_values_to_be_between on summary.best_val_accuracy: observed" in out
    assert "threshold {'min_value': 1.01}" in out
    assert str(run.steps["train"].status) == "failed"
    validation = run.steps["train"].outputs["train_expectations"][0].load()
    assert not validation.success and validation.failures[0].kwargs["min_value"] == 1.01
    assert "model" not in run.steps["train"].outputs


def test_bad_input_fails_the_run_and_writes_no_artifact(project, first_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(project / "data" / "sample", bad)
    victim = bad / "monocyte" / sorted(os.listdir(bad / "monocyte"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    cfg = yaml.safe_load((project / "configs" / "tiny.yaml").read_text())
    cfg["steps"]["ingest"]["parameters"]["source"] = str(bad)
    (project / "configs" / "bad.yaml").write_text(yaml.safe_dump(cfg))
    run, res = _run(project, "configs/bad.yaml", check=False)
    assert res.returncode != 0
    assert f"{victim.name}: unreadable or truncated image" in res.stdout + res.stderr
    assert str(run.status) == "failed"
    assert str(run.steps["ingest"].status) == "failed"
    assert run.steps["ingest"].outputs == {} or not any(run.steps["ingest"].outputs.values())
