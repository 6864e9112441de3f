"""Scheduled pipeline runs for stacks whose orchestrator cannot run ZenML schedules (the local one).

``bloodcell schedule --cron EXPR -c CONFIG`` triggers ``zenml pipeline run`` on a cron schedule
with APScheduler (EXPR defaults to the config's own ``schedule.cron_expression``, which is
removed from the config each run is given: the local orchestrator cannot run ZenML schedules, so
this process is the scheduler): never two runs at once (a trigger that fires while a run is going is skipped
and logged), each run's outcome logged (and appended as a JSON line to ``--log``), and a failed
run does not stop the schedule. EXPR is a 5-field crontab line, or 6 fields with seconds first.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from bloodcell.runlog import failure_lines

logger = logging.getLogger("bloodcell.schedule")


def cron_trigger(expr: str):
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr, timezone="UTC")
    if len(fields) == 6:
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=day_of_week, timezone="UTC")
    raise ValueError(f"cron expression {expr!r} has {len(fields)} fields (rule: 5, or 6 with seconds first)")


class PipelineRunner:
    """Runs ``zenml pipeline run SOURCE -c CONFIG`` and records each outcome; never raises."""

    def __init__(self, config: str, source: str, log_file: str | None = None):
        self.config, self.source = config, source
        self.log_file = Path(log_file) if log_file else None
        self.outcomes: list[dict] = []

    def __call__(self) -> dict:
        started = time.time()
        zenml = str(Path(sys.executable).parent / "zenml")
        logger.info("starting %s -c %s", self.source, self.config)
        proc = subprocess.run([zenml, "pipeline", "run", self.source, "-c", self.config],
                              capture_output=True, text=True)
        outcome = {
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "finished": datetime.now(timezone.utc).isoformat(),
            "seconds": round(time.time() - started, 1),
            "status": "completed" if proc.returncode == 0 else "failed",
            "exit_code": proc.returncode,
        }
        if proc.returncode:
            outcome["error"] = failure_lines(proc.stdout + proc.stderr)[-3000:]
            logger.error("run failed (exit %d) after %.1f s; the schedule goes on", proc.returncode, outcome["seconds"])
        else:
            logger.info("run completed in %.1f s", outcome["seconds"])
        self.outcomes.append(outcome)
        if self.log_file:
            with self.log_file.open("a") as f:
                f.write(json.dumps(outcome) + "\n")
        return outcome


def unscheduled_config(config: str) -> tuple[str, str | None]:
    """A copy of ``config`` without its ``schedule:`` section, and that section's cron expression
    (None if it has none). The copy lives in a temporary file kept for the process's lifetime."""
    if not Path(config).is_file():
        raise FileNotFoundError(f"{config}: pipeline config not found")
    cfg = yaml.safe_load(Path(config).read_text()) or {}
    schedule = cfg.pop("schedule", None) or {}
    if not schedule:
        return config, None
    tmp = tempfile.NamedTemporaryFile("w", prefix=Path(config).stem + ".", suffix=".yaml", delete=False)
    with tmp:
        yaml.safe_dump(cfg, tmp, sort_keys=False)
    return tmp.name, schedule.get("cron_expression")


def run_schedule(cron: str | None, config: str, source: str, log_file: str | None = None, max_runs: int | None = None) -> list[dict]:
    """Block and run on ``cron`` (default: the config's ``schedule.cron_expression``) until
    interrupted, or until ``max_runs`` runs have finished."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    run_config, config_cron = unscheduled_config(config)
    cron = cron or config_cron
    if not cron:
        raise ValueError(f"{config} has no schedule.cron_expression: give --cron")
    runner = PipelineRunner(run_config, source, log_file)
    scheduler = BlockingScheduler(timezone="UTC")

    def job() -> None:
        runner()
        if max_runs is not None and len(runner.outcomes) >= max_runs:
            scheduler.shutdown(wait=False)

    scheduler.add_job(job, cron_trigger(cron), max_instances=1, coalesce=True, misfire_grace_time=None)
    logger.info("scheduled %s -c %s on '%s' (UTC)", source, config, cron)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if run_config != config:
            Path(run_config).unlink(missing_ok=True)
    return runner.outcomes
