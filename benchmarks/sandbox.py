"""A throw-away copy of the project with its own ZenML repo, for tests and benchmarks.

The copy has the project's sources, configs and the shipped sample, so a caller can change an
image or a source file there without touching the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bloodcell.runlog import failure_lines

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("bloodcell", "steps", "materializers", "pipelines", "configs")
ZENML = str(Path(sys.executable).parent / "zenml")


def make_sandbox(dst: Path) -> Path:
    """Copy the project into ``dst`` and ``zenml init`` it (with the caller's ZENML_CONFIG_PATH)."""
    for d in SOURCES:
        shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "sample", dst / "data" / "sample")
    zenml(dst, "init")
    return dst


def zenml(proj: Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the ``zenml`` CLI in ``proj``, importing the project's code from there."""
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(proj), "ZENML_LOGGING_COLORS_DISABLED": "true"}
    res = subprocess.run([ZENML, *args], cwd=proj, env=full_env, capture_output=True, text=True, timeout=1800)
    if check and res.returncode != 0:
        raise RuntimeError(f"zenml {' '.join(args)} failed ({res.returncode}):\n{failure_lines(res.stdout + res.stderr)}")
    return res


def last_kept_run(kept: Path):
    """The newest pipeline run in a DIR kept by ``pipeline_timing.py --keep``, and ``load(step,
    output)`` for its artifacts. Points ZenML at that DIR's store, so call it before anything in
    the process opens a ZenML client; artifacts load with this checkout's materializers."""
    os.environ.update(ZENML_CONFIG_PATH=str(Path(kept).resolve() / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
                      TF_CPP_MIN_LOG_LEVEL="2")
    from zenml.client import Client

    run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]

    def load(step: str, output: str):
        return run.steps[step].outputs[output][0].load()

    return run, load
