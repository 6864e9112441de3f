"""`bloodcell schedule` on a schedule of seconds: runs, skips overlapping triggers, survives a failed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from benchmarks.sandbox import make_sandbox
from bloodcell.schedule import cron_trigger

PROBE = '''
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
'''


def test_cron_expressions():
    assert "second='*/2'" in repr(cron_trigger("*/2 * * * * *"))
    assert "hour='3'" in repr(cron_trigger("0 3 * * 1"))
    with pytest.raises(ValueError, match="has 3 fields"):
        cron_trigger("* * *")


def test_schedule_of_seconds_runs_one_at_a_time_and_survives_a_failure(tmp_path):
    proj = make_sandbox(tmp_path / "proj")
    (proj / "sched_probe.py").write_text(PROBE)
    (proj / "sched.yaml").write_text("enable_cache: false\n")
    (proj / "fail_next").write_text("")
    log = tmp_path / "runs.jsonl"
    env = {**os.environ, "PYTHONPATH": str(proj)}
    res = subprocess.run(
        [sys.executable, "-m", "bloodcell.cli", "schedule", "--cron", "*/2 * * * * *", "-c", "sched.yaml",
         "--source", "sched_probe.sched_probe", "--log", str(log), "--max-runs", "3"],
        cwd=proj, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 runs, 1 failed" in res.stdout
    outcomes = [json.loads(line) for line in log.read_text().splitlines()]
    assert [o["status"] for o in outcomes] == ["failed", "completed", "completed"]
    assert "scheduled run fails on purpose" in outcomes[0]["error"]
    # never two at once: each run starts after the previous one finished, though the trigger fires every 2 s
    for prev, nxt in zip(outcomes, outcomes[1:]):
        assert datetime.fromisoformat(nxt["started"]) >= datetime.fromisoformat(prev["finished"])
    assert max(o["seconds"] for o in outcomes) > 2
    assert "skipped" in res.stderr or "maximum number of running instances reached" in res.stderr
