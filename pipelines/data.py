"""The data steps, on their own or as the start of ``pipelines.training``: ingest ->
filter_outliers, with the expectation suites of both.

    zenml pipeline run pipelines.data.data_pipeline -c configs/quickstart.yaml

checks a source (its ``ingest`` and ``filter_outliers`` blocks; the other steps' are not used)
without training on it.

With the pipeline parameter ``fan_out`` (``parameters: {fan_out: {chunk_size: N}}``), a folder
source is read and scored a chunk at a time (``bloodcell.data.chunks``), each chunk two steps of
its own with their own cache entries: ``plan_chunks`` -> ``ingest_chunk`` and ``score_chunk`` for
each chunk -> ``gather_chunks`` -> ``filter_outliers`` on the chunks' features. It gives the same
dataset as the single path, and a source that grew by a few files reruns only the chunks they land
in. The chunk steps take their options from the config's ``ingest`` and ``filter_outliers``
blocks, so the switch is that one parameter. How many chunk steps run at once is ZenML's
``ZENML_DYNAMIC_PIPELINE_WORKER_COUNT``; this module sets it to the machine's cores where it is
not set (ZenML's default is 10 threads; on a Kubernetes orchestrator, 10 pods).
"""

import os
from typing import Any

from zenml import pipeline
from zenml.execution.pipeline.dynamic.run_context import DynamicPipelineRunContext

from bloodcell.data.chunks import FanOut
from bloodcell.data.outliers import OutlierConfig
from steps.filter_outliers import filter_outliers
from steps.gather_chunks import gather_chunks
from steps.ingest import ingest
from steps.ingest_chunk import ingest_chunk
from steps.plan_chunks import plan_chunks
from steps.score_chunk import score_chunk

os.environ.setdefault("ZENML_DYNAMIC_PIPELINE_WORKER_COUNT", str(os.cpu_count() or 1))
# ZenML 0.98 resolves a step's inputs through a cache of at most 100 step runs that evicts while
# it resolves: a step fed by more than about 100 steps (gather_chunks, filter_outliers over 50+
# chunks) fails with "No step `ingest_chunk_...` found in current run". Big enough for any source.
os.environ.setdefault("ZENML_EXECUTION_CONTEXT_STEP_RUN_CACHE_SIZE", "1000000")

# every data step a run may use: the config's ``steps:`` blocks apply to each run of them
DATA_STEPS = [ingest, plan_chunks, ingest_chunk, score_chunk, gather_chunks, filter_outliers]


@pipeline(dynamic=True, enable_cache=True, depends_on=DATA_STEPS)
def data_pipeline(fan_out: dict[str, Any] | None = None) -> None:
    clean_data(fan_out)


def clean_data(fan_out: dict[str, Any] | None) -> Any:
    """The filtered dataset, read by ``ingest`` or, with ``fan_out``, a chunk at a time."""
    if fan_out is None:
        filtered, _outliers = filter_outliers(ingest())
    else:
        dataset, features = chunked_ingest(FanOut.from_dict(fan_out))
        filtered, _outliers = filter_outliers(dataset, features)
    return filtered


def configured(step_name: str) -> dict[str, Any]:
    """The parameters the run's config gives the step ``step_name`` (its ``steps:`` block)."""
    steps = DynamicPipelineRunContext.get().snapshot.step_configurations
    return dict(steps[step_name].config.parameters) if step_name in steps else {}


def chunked_ingest(options: FanOut) -> tuple[Any, list[Any]]:
    """``ingest`` a chunk at a time: the gathered dataset, and the chunks' features."""
    given = configured("ingest")
    if "source" not in given:
        raise ValueError("fan_out needs steps.ingest.parameters.source (rule: a source to read)")
    read = {k: given[k] for k in ("source", "image_size", "classes", "class_map") if k in given}
    thumb = configured("filter_outliers").get("thumb", OutlierConfig().thumb)
    specs = plan_chunks(chunk_size=options.chunk_size, **read).load()
    chunks, features = [], []
    for spec in specs:
        key = FanOut.key(spec)
        chunks.append(ingest_chunk.submit(chunk=spec, id=f"ingest_chunk_{key}"))
        features.append(score_chunk.submit(chunks[-1], thumb=thumb, id=f"score_chunk_{key}"))
    gather = {
        k: given[k] for k in ("source", "image_size", "class_map", "stain_ranges") if k in given
    }
    return gather_chunks(chunks, features, **gather), features
