"""Scheduled pipeline runs.

A schedule file (``configs/retrain_weekly.yaml``) names a pipeline config and a ZenML schedule::

    pipeline_config: train_cpu.yaml   # relative to the schedule file
    parameters: {fan_out: {chunk_size: 2000}}   # optional: pipeline parameters on top of it
    schedule: {name: bloodcell-retrain-weekly, cron_expression: "0 3 * * 1"}

``bloodcell schedule FILE --register`` registers it with the active stack's orchestrator (one that
runs ZenML schedules: Kubernetes, Kubeflow, Airflow, Vertex, SageMaker). The local orchestrator
cannot, so there ``bloodcell schedule FILE`` (or ``-c CONFIG --cron EXPR``) is the scheduler:
APScheduler triggers ``zenml pipeline run`` on the cron, never two runs at once (a trigger that
fires while a run is going is skipped and logged), each run's outcome logged (and appended as a
JSON line to ``--log``), and a failed run does not stop the schedule. EXPR is a 5-field crontab
line, or 6 fields with seconds first (UTC).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bloodcell.mlops.runlog import failure_lines

logger = logging.getLogger("bloodcell.schedule")


def cron_trigger(expr: str):
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expr, timezone="UTC")
    if len(fields) == 6:
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone="UTC",
        )
    raise ValueError(
        f"cron expression {expr!r} has {len(fields)} fields (rule: 5, or 6 with seconds first)"
    )


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
        proc = subprocess.run(
            [zenml, "pipeline", "run", self.source, "-c", self.config],
            capture_output=True,
            text=True,
        )
        outcome = {
            "started": datetime.fromtimestamp(started, UTC).isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "seconds": round(time.time() - started, 1),
            "status": "completed" if proc.returncode == 0 else "failed",
            "exit_code": proc.returncode,
        }
        if proc.returncode:
            outcome["error"] = failure_lines(proc.stdout + proc.stderr)[-3000:]
            logger.error(
                "run failed (exit %d) after %.1f s; the schedule goes on",
                proc.returncode,
                outcome["seconds"],
            )
        else:
            logger.info("run completed in %.1f s", outcome["seconds"])
        self.outcomes.append(outcome)
        if self.log_file:
            with self.log_file.open("a") as f:
                f.write(json.dumps(outcome) + "\n")
        return outcome


def _temporary_config(cfg: dict, stem: str) -> str:
    """``cfg`` written as YAML to a temporary file named after ``stem``, kept for the process's
    lifetime (the caller removes it)."""
    with tempfile.NamedTemporaryFile("w", prefix=f"{stem}.", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(cfg, tmp, sort_keys=False)
    return tmp.name


def unscheduled_config(config: str) -> tuple[str, str | None]:
    """A copy of ``config`` without its ``schedule:`` section, and that section's cron expression
    (None if it has none). The copy lives in a temporary file kept for the process's lifetime."""
    if not Path(config).is_file():
        raise FileNotFoundError(f"{config}: pipeline config not found")
    cfg = yaml.safe_load(Path(config).read_text()) or {}
    schedule = cfg.pop("schedule", None) or {}
    if not schedule:
        return config, None
    return _temporary_config(cfg, Path(config).stem), schedule.get("cron_expression")


def load_schedule(path: str) -> tuple[str, dict]:
    """A schedule file's pipeline config (its path resolved against the file's folder; with the
    file's ``parameters`` set on top of the config's, a merged copy in a temporary file) and its
    ``schedule`` section (``name``, ``cron_expression``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: schedule file not found")
    spec = yaml.safe_load(p.read_text()) or {}
    if (
        not isinstance(spec, dict)
        or not spec.get("pipeline_config")
        or not (spec.get("schedule") or {}).get("cron_expression")
    ):
        raise ValueError(
            f"{p}: a schedule file has `pipeline_config: <config>.yaml` and "
            "`schedule: {name: ..., cron_expression: ...}`"
        )
    config = (p.parent / spec["pipeline_config"]).resolve()
    if not config.is_file():
        raise FileNotFoundError(f"{p}: its pipeline_config {config} does not exist")
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{p}: parameters {parameters!r} (rule: a mapping of pipeline parameters)")
    if not parameters:
        return str(config), dict(spec["schedule"])
    merged = yaml.safe_load(config.read_text()) or {}
    merged["parameters"] = {**(merged.get("parameters") or {}), **parameters}
    return _temporary_config(merged, f"{config.stem}.{p.stem}"), dict(spec["schedule"])


def register_schedule(config: str, schedule: dict, source: str) -> str:
    """Register ``schedule`` for the pipeline ``source`` with ``config`` on the active stack's
    orchestrator; a clear error if that orchestrator cannot run ZenML schedules."""
    from zenml.client import Client
    from zenml.config.schedule import Schedule
    from zenml.utils import source_utils

    stack = Client().active_stack
    if not stack.orchestrator.config.is_schedulable:
        raise ValueError(
            f"the orchestrator of stack {stack.name!r} ({stack.orchestrator.flavor}) cannot run "
            "ZenML schedules: run `bloodcell schedule` without --register and this process is the "
            "scheduler"
        )
    pipeline = source_utils.load(source)
    pipeline.with_options(config_path=config, schedule=Schedule(**schedule))()
    return (
        f"registered schedule {schedule.get('name') or ''} ({schedule['cron_expression']}) for "
        f"{source} -c {config}"
    )


def run_schedule(
    cron: str | None,
    config: str,
    source: str,
    log_file: str | None = None,
    max_runs: int | None = None,
) -> list[dict]:
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

    scheduler.add_job(
        job, cron_trigger(cron), max_instances=1, coalesce=True, misfire_grace_time=None
    )
    logger.info("scheduled %s -c %s on '%s' (UTC)", source, config, cron)
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if run_config != config:
            Path(run_config).unlink(missing_ok=True)
    return runner.outcomes
