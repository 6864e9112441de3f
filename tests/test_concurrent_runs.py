"""Runs that meet in one ZenML store: two identical quickstart runs at once both finish, and a run
killed with SIGKILL in the middle of ``train`` is resumed from its last finished epoch by the next
run of the same config (steps/_checkpoint.py; its unit tests are in tests/test_checkpoint.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sandbox import ZENML, make_sandbox, zenml

MODEL = "bloodcell-concurrent"  # its own registered model: other tests' runs share this ZenML store
# epochs of the runs at once and of the killed run. The two at once overlap whatever their length:
# the first is held (SIGSTOP) from its first backup until the second is training; past that first
# epoch each needs only enough left to tell a fit from scratch (SHORT) from a resumed one (fewer)
SHORT, EPOCHS = 6, 8

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = make_sandbox(tmp_path_factory.mktemp("proj"))
    cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
    # patience as long as the fit: early stopping would end an unlucky fit an epoch or more short
    cfg["steps"]["train"]["parameters"]["training"].update(
        epochs=SHORT, swa_epochs=2, early_stopping_patience=SHORT
    )
    for step, floors in (
        ("train", ["min_val_accuracy"]),
        ("fine_tune", ["min_val_accuracy"]),
        ("evaluate", ["min_plain_accuracy", "min_noisy_accuracy"]),
    ):
        cfg["steps"][step]["parameters"].update(
            dict.fromkeys(floors, 0.0)
        )  # short fits: no gate to flake
    cfg["model"] = {"name": MODEL}
    (proj / "configs" / "short.yaml").write_text(yaml.safe_dump(cfg))
    cfg["steps"]["train"]["parameters"]["training"].update(
        epochs=EPOCHS
    )  # not the cached fit of the other test
    (proj / "configs" / "longer.yaml").write_text(yaml.safe_dump(cfg))
    return proj


def _start(proj: Path, log: Path, config: str = "configs/short.yaml") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(proj), "ZENML_LOGGING_COLORS_DISABLED": "true"}
    return subprocess.Popen(
        [ZENML, "pipeline", "run", "pipelines.training.training_pipeline", "-c", config],
        cwd=proj,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _train_steps(n: int):
    from zenml.client import Client

    runs = (
        Client()
        .list_pipeline_runs(
            pipeline="training_pipeline", sort_by="desc:created", size=n, hydrate=True
        )
        .items
    )
    return [run.steps["train"] for run in runs]


def test_two_identical_runs_at_once_both_finish(project, tmp_path):
    """The second starts while the first is training (a schedule firing while someone runs the
    same config): it must neither resume from the first's live backup nor write into it. The first
    is held (SIGSTOP) from its first backup until the second's fit has begun, so the two fits
    overlap however slow the machine (else the second could find the first's fit done and
    cached)."""
    from zenml.client import Client

    store = Path(Client().active_stack.artifact_store.path)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = _start(project, logs[0])
    _wait_for_backup(store, first, logs[0])
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = _start(project, logs[1])
        _wait_until(
            lambda: "train backups in" in logs[1].read_text(),
            second,
            logs[1],
            "the second run did not reach train",
        )
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    codes = [first.wait(timeout=1200), second.wait(timeout=1200)]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in texts)
    # each trained every epoch from scratch: the second did not take up the first's backup
    assert [(str(step.status), step.run_metadata["epochs"]) for step in _train_steps(2)] == [
        ("completed", SHORT)
    ] * 2
    folders = [
        next(line for line in text.splitlines() if "train backups in" in line) for text in texts
    ]
    assert folders[0] != folders[1] and all("(a new fit)" in line for line in folders)
    assert "belongs to a run in progress; this run keeps its own" in texts[1]


def _backup_epoch(store: Path) -> int:
    """The last finished epoch in the newest training backup in ``store`` (0 if there is none
    yet)."""
    metas = sorted(
        store.glob("checkpoints/train/**/training_metadata.json"), key=lambda p: p.stat().st_mtime
    )
    try:
        return json.loads(metas[-1].read_text())["epoch"] if metas else 0
    except (ValueError, OSError):  # being written or removed: look again
        return 0


def _wait_until(done, run: subprocess.Popen, log: Path, timeout_message: str) -> None:
    """Poll ``done()`` until true; fail with ``run``'s log if it exits first, or after 15
    minutes."""
    deadline = time.monotonic() + 900
    while not done():
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, timeout_message
        time.sleep(0.2)


def _wait_for_backup(store: Path, run: subprocess.Popen, log: Path, epochs: int = 1) -> None:
    _wait_until(lambda: _backup_epoch(store) >= epochs, run, log, "train saved no backup")


def test_a_run_killed_in_train_resumes_from_its_last_finished_epoch(project, tmp_path):
    from zenml.client import Client

    store = Path(Client().active_stack.artifact_store.path)
    run = _start(project, tmp_path / "killed.log", "configs/longer.yaml")
    _wait_for_backup(store, run, tmp_path / "killed.log", epochs=2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    done = _backup_epoch(store)  # read after the kill: the epoch the backup holds
    assert 2 <= done < EPOCHS

    res = zenml(
        project,
        "pipeline",
        "run",
        "pipelines.training.training_pipeline",
        "-c",
        "configs/longer.yaml",
    )
    out = res.stdout + res.stderr
    assert "(resuming an interrupted run)" in out
    step = _train_steps(1)[0]
    assert str(step.status) == "completed"
    assert (
        step.run_metadata["epochs"] == EPOCHS - done
    )  # only the epochs the killed run had not finished
    assert not any(
        store.glob("checkpoints/train/**/training_metadata.json")
    )  # the finished fit's backup is gone
