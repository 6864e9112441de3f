"""Open a pipeline run kept by ``benchmarks/pipeline_timing.py --keep DIR``, for the experiments
that look at a trained model more closely."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code and materializers


def last_kept_run(kept: Path):
    """The newest pipeline run in a DIR kept by ``pipeline_timing.py --keep``, and ``load(step,
    output)`` for its artifacts. Points ZenML at that DIR's store, so call it before anything in
    the process opens a ZenML client; artifacts load with this checkout's materializers."""
    os.environ.update(
        ZENML_CONFIG_PATH=str(Path(kept).resolve() / "zenml"),
        ZENML_ANALYTICS_OPT_IN="false",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    from zenml.client import Client

    run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]

    def load(step: str, output: str):
        return run.steps[step].outputs[output][0].load()

    return run, load
