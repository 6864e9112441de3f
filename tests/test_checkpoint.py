"""Backup folders of the training steps (steps/_checkpoint.py): one per run in progress, an
interrupted run's taken up by the next run, a finished run's removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steps._checkpoint import slot_in

from conftest import ROOT


def test_runs_at_once_get_folders_of_their_own_and_a_finished_one_is_removed(tmp_path):
    with slot_in(str(tmp_path)) as first:
        Path(first, "latest.weights.h5").write_text("first run, epoch 1")
        with slot_in(str(tmp_path)) as second:  # the first is in use: not resumed, not touched
            assert second != first and not os.listdir(second)
            Path(second, "latest.weights.h5").write_text("second run, epoch 1")
        assert not Path(second).exists() and not Path(f"{second}.lock").exists()
        assert Path(first, "latest.weights.h5").read_text() == "first run, epoch 1"
    assert os.listdir(tmp_path) == []


def test_the_next_runs_resume_the_interrupted_backups_latest_first(tmp_path):
    base = str(tmp_path)
    with (
        pytest.raises(KeyboardInterrupt),
        slot_in(base) as older,
    ):  # two runs at once, both interrupted
        Path(older, "latest.weights.h5").write_text("epoch 2")
        time.sleep(0.05)
        with slot_in(base) as newer:
            Path(newer, "latest.weights.h5").write_text("epoch 3")
            raise KeyboardInterrupt("simulated interruption")
    with slot_in(base) as first:
        assert first == newer and Path(first, "latest.weights.h5").read_text() == "epoch 3"
        with slot_in(base) as second:  # the newer one is in use again: the older one
            assert second == older and Path(second, "latest.weights.h5").read_text() == "epoch 2"
            with slot_in(base) as third:  # none left to resume: a new folder
                assert third not in (older, newer) and not os.listdir(third)
    assert os.listdir(base) == []


def test_a_killed_run_releases_its_backup_to_the_next_run(tmp_path):
    """The lock dies with the process (SIGKILL included): its backup is taken up by the next run,
    and not before."""
    code = (
        "import sys, time\nfrom steps._checkpoint import slot_in\nwith slot_in(sys.argv[1]) as s:\n"
        "    open(s + '/latest.weights.h5', 'w').write('epoch 4')\n    print('slot:', s, "
        "flush=True)\n    time.sleep(120)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        held = next(line for line in child.stdout if line.startswith("slot: "))[
            len("slot: ") :
        ].strip()
        assert held and Path(held).is_dir()
        with slot_in(str(tmp_path)) as other:
            assert other != held  # alive: its backup is not taken
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with slot_in(str(tmp_path)) as resumed:
            assert resumed == held and Path(resumed, "latest.weights.h5").read_text() == "epoch 4"
    finally:
        child.kill()
        child.stdout.close()


def test_the_mirror_copies_what_changed_epoch_counter_last_and_pulls_back_whole(
    tmp_path, monkeypatch
):
    """steps/_checkpoint.push/pull on a second folder standing in for the artifact store (the S3
    path itself: tests/test_remote_store.py)."""
    from steps import _checkpoint

    local, remote, back = tmp_path / "slot", tmp_path / "store" / "slot", tmp_path / "other_machine"
    (local / "swa").mkdir(parents=True)
    for name, text in (
        ("training_metadata.json", '{"epoch": 1}'),
        ("latest.weights.h5", "w1"),
        ("swa/weight_average.npz", "a1"),
    ):
        (local / name).write_text(text)
    copied, real_copy = [], _checkpoint.fileio.copy
    monkeypatch.setattr(
        _checkpoint.fileio,
        "copy",
        lambda src, dst, overwrite=False: (
            copied.append(Path(src).name),
            real_copy(src, dst, overwrite),
        ),
    )
    sent: dict = {}
    assert _checkpoint.push(str(local), str(remote), sent) == 3
    assert copied[-1] == "training_metadata.json"  # the epoch counter after the weights it counts
    (local / "latest.weights.h5").write_text("w2, epoch 2")
    assert _checkpoint.push(str(local), str(remote), sent) == 1  # only what changed
    assert _checkpoint.pull(str(remote), str(back)) == 3
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file()) == [
        "latest.weights.h5",
        "swa/weight_average.npz",
        "training_metadata.json",
    ]
    assert (back / "latest.weights.h5").read_text() == "w2, epoch 2"
