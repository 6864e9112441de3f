"""The command line starts quietly: commands that need no model do not import TensorFlow, and
nothing of TensorFlow's start-up logging reaches the console."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"
    }  # as a user's shell has it
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_lineage_schedule_and_help_do_not_import_tensorflow():
    probe = (
        "import sys; from bloodcell import cli; from bloodcell.mlops import lineage, registry, "
        "schedule; "
        "import materializers.validation_materializer, materializers.dataset_materializer; "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    res = _run("-c", probe)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    for args in (["--help"], ["lineage", "--help"], ["schedule", "--help"]):
        res = _run("-m", "bloodcell.cli", *args)
        assert res.returncode == 0 and res.stdout.startswith("usage: bloodcell")
        assert res.stderr == "", res.stderr


def test_predict_loads_tensorflow_without_its_start_up_lines(tmp_path, small_tree):
    import keras

    from bloodcell.model.build import build_model

    path = tmp_path / "m.keras"
    build_model("custom_cnn", 8, 96, filters=[8], dense_units=8).save(path)
    keras.backend.clear_session()
    res = _run(
        "-m",
        "bloodcell.cli",
        "predict",
        str(path),
        str(small_tree),
        "--output",
        str(tmp_path / "p.csv"),
    )
    assert res.returncode == 0, res.stderr
    assert "oneDNN" not in res.stderr and "cuda" not in res.stderr.lower(), res.stderr
    assert res.stdout.startswith("predicted 24 images: 24 accept, 0 review, 0 not_a_cell")
