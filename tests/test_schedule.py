"""`bloodcell schedule` on a schedule of seconds: runs, skips overlapping triggers, survives a
failed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from bloodcell.mlops.schedule import cron_trigger

from sandbox import make_sandbox

PROBE = """
import os
from zenml import pipeline, step


@step(enable_cache=False)
def tick() -> int:
    if os.path.exists("fail_next"):
        os.remove("fail_next")
        raise RuntimeError("scheduled run fails on purpose")
    return 1


@pipeline(enable_cache=False)
def sched_probe() -> None:
    tick()
"""


def test_cron_expressions():
    assert "second='*/2'" in repr(cron_trigger("*/2 * * * * *"))
    assert "hour='3'" in repr(cron_trigger("0 3 * * 1"))
    with pytest.raises(ValueError, match="has 3 fields"):
        cron_trigger("* * *")


@pytest.mark.pipeline
def test_schedule_of_seconds_runs_one_at_a_time_and_survives_a_failure(tmp_path):
    proj = make_sandbox(tmp_path / "proj")
    (proj / "sched_probe.py").write_text(PROBE)
    # the cron comes from the config's ZenML `schedule:` section, which is stripped for the local
    # stack
    (proj / "sched.yaml").write_text(
        "enable_cache: false\nschedule:\n  cron_expression: '*/2 * * * * *'\n"
    )
    (proj / "fail_next").write_text("")
    log = tmp_path / "runs.jsonl"
    env = {**os.environ, "PYTHONPATH": str(proj)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bloodcell.cli",
            "schedule",
            "-c",
            "sched.yaml",
            "--source",
            "sched_probe.sched_probe",
            "--log",
            str(log),
            "--max-runs",
            "3",
        ],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 runs, 1 failed" in res.stdout
    outcomes = [json.loads(line) for line in log.read_text().splitlines()]
    assert [o["status"] for o in outcomes] == ["failed", "completed", "completed"]
    assert "scheduled run fails on purpose" in outcomes[0]["error"]
    # never two at once: each run starts after the previous one finished, though the trigger fires
    # every 2 s
    for prev, nxt in zip(outcomes, outcomes[1:]):
        assert datetime.fromisoformat(nxt["started"]) >= datetime.fromisoformat(prev["finished"])
    assert max(o["seconds"] for o in outcomes) > 2
    assert "skipped" in res.stderr or "maximum number of running instances reached" in res.stderr


def test_retrain_weekly_is_the_cpu_recipe_on_a_schedule(tmp_path, capsys):
    import yaml

    from bloodcell.cli import main as cli
    from bloodcell.mlops.schedule import load_schedule

    from conftest import ROOT

    config, schedule = load_schedule(str(ROOT / "configs" / "retrain_weekly.yaml"))
    recipe = yaml.safe_load((ROOT / "configs" / "train_cpu.yaml").read_text())
    # the CPU recipe, with its data steps fanned out: a grown folder rereads only its new chunks
    assert yaml.safe_load(Path(config).read_text()) == {
        **recipe,
        "parameters": {"fan_out": {"chunk_size": 2000}},
    }
    assert schedule == {"name": "bloodcell-retrain-weekly", "cron_expression": "0 3 * * 1"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: {cron_expression: '0 3 * * 1'}\n")
    with pytest.raises(ValueError, match="a schedule file has `pipeline_config"):
        load_schedule(str(bad))
    bad.write_text("pipeline_config: nowhere.yaml\nschedule: {cron_expression: '0 3 * * 1'}\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml does not exist"):
        load_schedule(str(bad))
    # the local orchestrator cannot run ZenML schedules: --register says so and registers nothing
    assert cli(["schedule", str(ROOT / "configs" / "retrain_weekly.yaml"), "--register"]) == 2
    assert (
        "cannot run ZenML schedules: run `bloodcell schedule` without --register"
        in capsys.readouterr().err
    )


@pytest.mark.pipeline
def test_scheduled_runs_are_cached_on_unchanged_data_and_retrain_on_new_images(tmp_path):
    """The real training pipeline on a schedule of seconds: the second run finds nothing new and is
    served from the cache; after new images land in the source folder, the next run retrains."""
    import shutil

    import yaml
    from zenml.client import Client

    from conftest import SAMPLE

    proj = make_sandbox(tmp_path / "proj")
    source = tmp_path / "incoming"
    shutil.copytree(SAMPLE, source)
    extra = {}  # 5 images per class held back, to arrive later
    for cls in sorted(p for p in source.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir())[-5:]:
            extra[f] = f.read_bytes()
            f.unlink()
    cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
    cfg["steps"]["ingest"]["parameters"]["source"] = str(source)
    cfg["steps"]["train"]["parameters"]["training"].update(
        epochs=1, swa_epochs=0, recalibrate_samples_per_epoch=32
    )
    cfg["steps"]["evaluate"]["parameters"]["corruption_samples"] = None
    for step, key in (
        ("train", "min_val_accuracy"),
        ("fine_tune", "min_val_accuracy"),
        ("evaluate", "min_plain_accuracy"),
        ("evaluate", "min_noisy_accuracy"),
    ):
        cfg["steps"][step]["parameters"][key] = 0.0
    cfg["model"] = {"name": "bloodcell-schedule-test"}
    (proj / "configs" / "fast.yaml").write_text(yaml.safe_dump(cfg))
    # a schedule file like retrain_weekly.yaml, on a schedule of seconds
    weekly = yaml.safe_load((proj / "configs" / "retrain_weekly.yaml").read_text())
    weekly.update(
        pipeline_config="fast.yaml",
        schedule={**weekly["schedule"], "cron_expression": "*/2 * * * * *"},
    )
    (proj / "configs" / "weekly_fast.yaml").write_text(yaml.safe_dump(weekly))
    env = {**os.environ, "PYTHONPATH": str(proj)}

    def schedule(runs: int) -> list[dict]:
        log = tmp_path / f"runs{runs}.jsonl"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "bloodcell.cli",
                "schedule",
                "configs/weekly_fast.yaml",
                "--log",
                str(log),
                "--max-runs",
                str(runs),
            ],
            cwd=proj,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return [json.loads(line) for line in log.read_text().splitlines()]

    first, second = schedule(2)
    assert first["status"] == second["status"] == "completed"
    runs = (
        Client()
        .list_pipeline_runs(sort_by="desc:created", size=2, pipeline_name="training_pipeline")
        .items
    )
    statuses = {name: str(s.status) for name, s in runs[0].steps.items()}
    # retrain_weekly.yaml reads the source a chunk at a time: every chunk is a cache hit too
    cacheable = ("gather_chunks", "filter_outliers", "split", "rebalance", "train", "fine_tune")
    chunks = [s for s in statuses if s.startswith(("ingest_chunk_", "score_chunk_"))]
    assert len(chunks) >= 16 and all(statuses[s] == "cached" for s in (*cacheable, *chunks))
    assert second["seconds"] < first["seconds"]  # no training: import, listing, cache lookups

    for f, data in extra.items():
        f.write_bytes(data)
    (third,) = schedule(1)
    assert third["status"] == "completed"
    latest = (
        Client()
        .list_pipeline_runs(sort_by="desc:created", size=1, pipeline_name="training_pipeline")
        .items[0]
    )
    assert str(latest.steps["train"].status) == "completed"  # retrained on the new images
    assert len(latest.steps["gather_chunks"].outputs["dataset"][0].load()) == 400
