"""Any lab's data, end to end in a throw-away ZenML repository: classes and image size come from
the data and travel with the model; other labs' images are scored in every evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sandbox import make_sandbox, zenml

pytestmark = pytest.mark.pipeline

WBC = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
MODEL = "bloodcell-any-lab"


def _run(proj: Path, config: dict, name: str, check: bool = True):
    from zenml.client import Client

    (proj / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(config))
    res = zenml(
        proj,
        "pipeline",
        "run",
        "pipelines.training.training_pipeline",
        "-c",
        f"configs/{name}.yaml",
        check=check,
    )
    return Client().get_pipeline("training_pipeline").last_run, res


def _config(proj: Path, source: str, **ingest) -> dict:
    """The quickstart, shortened, on ``source``."""
    cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
    cfg["model"] = {"name": MODEL}
    cfg["steps"]["ingest"]["parameters"].update(source=source, **ingest)
    cfg["steps"]["train"]["parameters"]["training"].update(
        epochs=2, swa_epochs=1, recalibrate_samples_per_epoch=64
    )
    for step, key in (
        ("train", "min_val_accuracy"),
        ("fine_tune", "min_val_accuracy"),
        ("evaluate", "min_plain_accuracy"),
        ("evaluate", "min_noisy_accuracy"),
    ):
        cfg["steps"][step]["parameters"][key] = 0.0
    cfg["steps"]["evaluate"]["parameters"]["corruption_samples"] = 8
    return cfg


@pytest.fixture(scope="module")
def five_class_run(tmp_path_factory):
    from conftest import SAMPLE

    root = tmp_path_factory.mktemp("anylab")
    proj = make_sandbox(root / "proj")
    wbc = root / "wbc"
    for cls in WBC:
        shutil.copytree(SAMPLE / cls, wbc / cls)
    # "another lab": 4 images each of three classes, in folders named its own way
    lab = root / "lab2"
    for folder, cls in (
        ("Neutrophils", "neutrophil"),
        ("lymphocyte", "lymphocyte"),
        ("monocyte", "monocyte"),
    ):
        (lab / folder).mkdir(parents=True)
        for f in sorted((SAMPLE / cls).iterdir())[-4:]:
            shutil.copy(f, lab / folder / f.name)
    cfg = _config(proj, str(wbc), image_size=64)
    cfg["steps"]["ingest_external"] = {
        "parameters": {
            "external": [
                {"name": "lab2", "path": str(lab), "class_map": {"Neutrophils": "neutrophil"}}
            ]
        }
    }
    run, _ = _run(proj, cfg, "wbc64")
    return proj, run, cfg, lab


def test_five_classes_at_64_px_train_evaluate_and_travel_with_the_model(five_class_run):
    from bloodcell.model.build import class_names_of

    proj, run, _, _ = five_class_run
    assert str(run.status) == "completed"
    dataset = run.steps["ingest"].outputs["dataset"][0].load()
    assert dataset.class_names == WBC and dataset.images.shape[1:] == (64, 64, 3)
    model = run.steps["fine_tune"].outputs["shipped_model"][0].load()
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 5)
    assert class_names_of(model) == WBC  # inside the shipped (TTA) model
    report = run.steps["evaluate"].outputs["evaluation"][0].load()
    assert report.class_names == WBC and report.sets["plain"].n == 25
    # the other lab's set: n, accuracy, balanced accuracy over the 3 classes it has, recall per
    # class
    lab2 = report.external["lab2"]
    assert lab2.n == 12 and lab2.present == ["lymphocyte", "monocyte", "neutrophil"]
    recalls = [lab2.per_class[c]["recall"] for c in lab2.present]
    assert lab2.balanced_accuracy == pytest.approx(np.mean(recalls))
    external = run.steps["ingest_external"].outputs["external"][0].load()
    predicted = model.predict(external.images.astype("float32"), verbose=0).argmax(1)
    truth = np.array([WBC.index(external.class_names[y]) for y in external.labels])
    assert lab2.accuracy == pytest.approx(np.mean(predicted == truth))
    evaluation = run.steps["evaluate"].outputs["evaluation"][0]
    assert evaluation.run_metadata["external_lab2_balanced_accuracy"] == pytest.approx(
        lab2.balanced_accuracy
    )
    assert set(evaluation.run_metadata["external_lab2_recall_per_class"]) == set(lab2.present)
    # table, 2 confusions, the lab's confusion, reliability, risk-coverage, corruption curves
    assert len(evaluation.visualizations) == 7
    assert (
        evaluation.run_metadata["external_lab2_coverage"]
        == report.trust["external_lab2"]["coverage"]
    )
    from zenml.client import Client

    version = Client().get_pipeline_run(run.id).model_version
    assert version.run_metadata["class_names"] == WBC and version.run_metadata["image_size"] == 64
    assert version.run_metadata["external_lab2_accuracy"] == pytest.approx(lab2.accuracy)
    # bloodcell lineage shows the version's classes and the other lab's figures
    from bloodcell.mlops.lineage import format_lineage, lineage

    text = format_lineage(lineage(str(version.number), MODEL, load_reports=False))
    assert f"class_names: {WBC}" in text and "external_lab2_balanced_accuracy:" in text


def test_export_and_predict_name_the_five_classes(five_class_run, tmp_path):
    """`bloodcell predict` takes any size (the sample's 96 px images; the model's 64 px) and
    writes the model's own class names."""
    from bloodcell.cli import main as cli

    from conftest import SAMPLE

    out = tmp_path / "wbc.keras"
    assert cli(["export", "--version", "latest", "--model-name", MODEL, "--output", str(out)]) == 0
    csv = tmp_path / "p.csv"
    assert cli(["predict", str(out), str(SAMPLE / "lymphocyte"), "--output", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert list(table.columns) == [
        "id",
        "predicted_class",
        "confidence",
        "status",
        "reason",
        "check",
        "distance",
        *[f"p_{c}" for c in WBC],
    ]
    assert set(table.status) <= {"accept", "review", "not_a_cell"} and table.reason.notna().all()
    assert len(table) == 50 and set(table.predicted_class) <= set(WBC)
    np.testing.assert_allclose(table[[f"p_{c}" for c in WBC]].sum(axis=1), 1.0, atol=1e-4)


def test_an_other_labs_class_the_model_lacks_is_a_clear_error(five_class_run):
    from conftest import SAMPLE

    proj, _, cfg, lab = five_class_run
    shutil.copytree(SAMPLE / "platelet", lab / "platelet")
    try:
        run, res = _run(proj, cfg, "wbc64_platelets", check=False)
    finally:
        shutil.rmtree(lab / "platelet")
    assert res.returncode != 0
    assert (
        "external set 'lab2': class(es) ['platelet'] are not among the model's classes"
        in res.stdout + res.stderr
    )
    assert str(run.steps["evaluate"].status) == "failed"
    assert str(run.steps["train"].status) == "cached"  # only the evaluation saw the new images


def test_a_three_class_npz_at_32_px(tmp_path):
    from bloodcell.data.ingest import read_source
    from bloodcell.model.build import class_names_of

    from conftest import SAMPLE

    proj = make_sandbox(tmp_path / "proj")
    sample = read_source(SAMPLE, image_size=32)
    keep = np.flatnonzero(sample.labels < 3)
    np.savez(tmp_path / "three.npz", images=sample.images[keep], labels=sample.labels[keep])
    cfg = _config(
        proj, str(tmp_path / "three.npz"), image_size=32, classes=["basal", "eosin", "erythro"]
    )
    cfg["steps"]["train"]["parameters"]["training"].update(epochs=1, swa_epochs=0)
    cfg["model"] = {"name": "bloodcell-three"}
    run, _ = _run(proj, cfg, "three")
    model = run.steps["fine_tune"].outputs["shipped_model"][0].load()
    assert model.input_shape == (None, 32, 32, 3) and class_names_of(model) == [
        "basal",
        "eosin",
        "erythro",
    ]
    assert run.steps["evaluate"].outputs["evaluation"][0].load().sets["plain"].n == 15
    # a classes list that does not fit the labels stops ingest, naming the row
    cfg["steps"]["ingest"]["parameters"]["classes"] = ["basal", "eosin"]
    run, res = _run(proj, cfg, "three_bad", check=False)
    assert (
        res.returncode != 0
        and "three.npz:labels row 100: label 2 (rule: labels are integers in 0..1)"
        in res.stdout + res.stderr
    )


def _in_another_stain(image: Path, out: Path) -> None:
    """A sample image as a new lab with a yellower stain would show it, saved as PNG at ``out``."""
    from PIL import Image

    x = np.asarray(Image.open(image).convert("RGB"), np.float32) * np.array([1.0, 0.92, 0.6])
    Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(out)


def _adapt(proj: Path, *args: str):
    """`bloodcell adapt ARGS` in the sandbox project, as a user runs it."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "bloodcell.cli", "adapt", "--model-name", MODEL, *args],
        cwd=proj,
        env={**os.environ, "PYTHONPATH": str(proj)},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_adapt_a_version_to_a_new_lab_with_a_few_labelled_cells(five_class_run, tmp_path):
    """`bloodcell adapt`: a new lab (3 of the 5 classes, another stain, 6 labelled cells each)
    makes a new version whose lineage reaches both the base version's data and the lab's cells;
    the adapted model keeps the 5 classes and is exported."""
    from zenml.client import Client

    from bloodcell import MODEL_ARTIFACT
    from bloodcell.mlops.registry import get_version
    from bloodcell.model.build import class_names_of
    from bloodcell.model.predict import load_model

    from conftest import SAMPLE

    proj, training_run = five_class_run[0], five_class_run[1]
    newlab, check = tmp_path / "newlab", tmp_path / "check"
    for cls in ("lymphocyte", "monocyte", "neutrophil"):
        for folder, files in (
            (newlab, slice(10, 16)),
            (check, slice(16, 26)),
        ):  # labelled for adapting / for checking
            (folder / cls).mkdir(parents=True)
            for f in sorted((SAMPLE / cls).iterdir())[files]:
                _in_another_stain(f, folder / cls / f"{f.stem}.png")
    base = (
        Client().get_pipeline_run(training_run.id).model_version
    )  # a version the training pipeline made
    out = tmp_path / "adapted.keras"
    res = _adapt(
        proj,
        "--version",
        str(base.number),
        "--data",
        str(newlab),
        "--output",
        str(out),
        "--check",
        f"newlab={check}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    new = get_version("latest", MODEL)
    assert (
        new.number > base.number
        and f"new version {new.number}" in res.stdout
        and "check newlab: accuracy" in res.stdout
    )
    meta = new.run_metadata
    assert meta["adapted"] is True and meta["class_names"] == WBC and meta["lab_samples"] == 18
    assert (
        meta["external_samples"] == 30
        and "external_newlab_balanced_accuracy" in meta
        and "plain_accuracy" in meta
    )
    # lineage: the adaptation run read the base version's shipped model and training data, and
    # the lab's cells
    adaptation_run = Client().get_pipeline("adaptation_pipeline").last_run
    inputs = {name: avs[0].id for name, avs in adaptation_run.steps["adapt"].inputs.items()}
    assert inputs["base"] == base.get_artifact(MODEL_ARTIFACT).id
    assert inputs["replay"] == base.get_artifact("balanced_train").id
    assert adaptation_run.steps["ingest"].outputs["dataset"][0].run_metadata["source"] == str(
        newlab
    )
    assert new.stage is None or str(new.stage) != "production"  # promoted by hand, after checking
    adapted = load_model(out)
    assert class_names_of(adapted) == WBC and adapted.input_shape == (None, 64, 64, 3)


def test_adapt_without_labels_takes_batch_norm_from_the_labs_cells(five_class_run, tmp_path):
    """`bloodcell adapt --unlabelled`: a flat folder of a new lab's cells (no classes) makes a new
    version whose batch norm comes from them, with lineage to the base model and the lab's
    images."""
    from zenml.client import Client

    from bloodcell import MODEL_ARTIFACT
    from bloodcell.mlops.registry import get_version
    from bloodcell.model.build import class_names_of
    from bloodcell.model.predict import load_model

    from conftest import SAMPLE

    proj, training_run = five_class_run[0], five_class_run[1]
    cells, check = tmp_path / "cells", tmp_path / "check"
    cells.mkdir()
    for cls in ("lymphocyte", "monocyte", "neutrophil"):
        (check / cls).mkdir(parents=True)
        for i, f in enumerate(sorted((SAMPLE / cls).iterdir())[26:44]):
            _in_another_stain(f, (cells if i < 12 else check / cls) / f"{cls}_{f.stem}.png")
    base = (
        Client().get_pipeline_run(training_run.id).model_version
    )  # a version the training pipeline made
    assert (
        base.get_artifact(MODEL_ARTIFACT).run_metadata["batch_norm_layers"] > 0
    )  # what the CLI checks first
    out = tmp_path / "recalibrated.keras"
    args = [
        "--version",
        str(base.number),
        "--data",
        str(cells),
        "--output",
        str(out),
        "--check",
        f"newlab={check}",
        "--unlabelled",
    ]
    res = _adapt(proj, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    new = get_version("latest", MODEL)
    assert (
        new.number > base.number
        and "batch norm from the unlabelled cells of" in res.stdout
        and "check newlab: accuracy" in res.stdout
    )
    meta = new.run_metadata
    assert meta["adaptation"] == "batch norm from unlabelled cells" and meta["lab_samples"] == 36
    assert meta["class_names"] == WBC and meta["external_samples"] == 18
    run = Client().get_pipeline("recalibration_pipeline").last_run
    assert run.steps["recalibrate"].inputs["base"][0].id == base.get_artifact(MODEL_ARTIFACT).id
    assert run.steps["ingest_unlabeled"].outputs["images"][0].run_metadata["source"] == str(cells)
    assert class_names_of(load_model(out)) == WBC
    # too few cells for batch-norm statistics: a clear error naming the rule, and no new version
    # with a model
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(cells.iterdir())[:5]:
        f.rename(few / f.name)
    args[args.index(str(cells))] = str(few)
    res = _adapt(proj, *args)
    said = " ".join((res.stdout + res.stderr).split())  # the run's log lines may be wrapped
    assert (
        res.returncode == 1
        and "5 image(s) given, at least 32 are needed" in said
        and "Traceback" not in res.stderr
    )
    assert get_version("latest", MODEL).number == new.number
    # an adapted version has no test split of its own to be scored on: adapt its base instead
    args[args.index(str(base.number))] = str(new.number)
    res = _adapt(proj, *args)
    assert res.returncode != 0 and f"version {new.number} has no 'test' artifact" in res.stderr
