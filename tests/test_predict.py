"""Export/predict round trip: a saved .keras model gives the same probabilities through the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bloodcell import CLASS_NAMES
from bloodcell.cli import main as cli
from bloodcell.data.ingest import IngestError, read_source, read_unlabeled
from bloodcell.model.build import build_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return model, path


def test_folder_prediction_equals_the_model(tmp_path, small_tree, saved_model):
    model, path = saved_model
    out = tmp_path / "pred.csv"
    assert cli(["predict", str(path), str(small_tree), "--output", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == [
        "id",
        "predicted_class",
        "confidence",
        "status",
        "reason",
        "check",
        "distance",
        *[f"p_{c}" for c in CLASS_NAMES],
    ]
    assert set(table.status) == {"accept"} and set(table.reason) == {
        "model predates referral"
    }  # no rule in it
    ds = read_source(small_tree)
    assert table.id.tolist() == ds.ids
    expected = model.predict(ds.images.astype("float32"), verbose=0)
    np.testing.assert_allclose(
        table[[f"p_{c}" for c in CLASS_NAMES]].to_numpy(), expected, rtol=1e-4, atol=1e-6
    )
    assert table.predicted_class.tolist() == [CLASS_NAMES[i] for i in expected.argmax(1)]


def test_npz_prediction_ids_and_labels_ignored(tmp_path, sample_dataset, saved_model):
    _, path = saved_model
    npz = tmp_path / "unlabeled.npz"
    np.savez(npz, images=sample_dataset.images[:10])
    out = tmp_path / "pred.csv"
    assert cli(["predict", str(path), str(npz), "--output", str(out)]) == 0
    table = pd.read_csv(out)
    assert table.id.tolist() == [f"unlabeled.npz:{i}" for i in range(10)]
    assert np.allclose(table[[f"p_{c}" for c in CLASS_NAMES]].sum(axis=1), 1.0, atol=1e-4)


def test_documentation_files_are_skipped_anything_else_must_be_an_image(small_tree):
    n = sum(1 for p in small_tree.rglob("*") if p.is_file())
    (small_tree / "README.md").write_text("attribution")
    (small_tree / "ig" / "LICENSE").write_text("CC BY 4.0")
    ds = read_unlabeled(small_tree)
    assert len(ds) == n and "README.md" not in ds.ids and not ds.labelled
    (small_tree / "ig" / "notes.dat").write_bytes(b"not an image")
    with pytest.raises(IngestError, match=r"notes\.dat: not an image file"):
        read_unlabeled(small_tree)


def test_bad_model_and_bad_input_are_clear_errors(tmp_path, small_tree, saved_model, capsys):
    assert (
        cli(
            [
                "predict",
                str(tmp_path / "none.keras"),
                str(small_tree),
                "--output",
                str(tmp_path / "p.csv"),
            ]
        )
        == 2
    )
    assert "not a .keras model file" in capsys.readouterr().err
    f = next((small_tree / "ig").iterdir())
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(IngestError, match=rf"{f.name}.*truncated"):
        read_unlabeled(small_tree)
