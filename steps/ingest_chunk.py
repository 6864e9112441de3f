"""Fan-out path, step 1b: read one chunk of the source into a dataset artifact of its own."""

from __future__ import annotations

from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from bloodcell.data.chunks import read_chunk
from bloodcell.data.dataset import Dataset
from materializers.dataset_materializer import DatasetMaterializer
from steps._cache import content_cache_policy

logger = get_logger(__name__)


# Cached: ``chunk`` (a parameter) holds the digest of the chunk's files' names, sizes and times,
# so an unchanged chunk is served from the cache and an edited file reruns its chunk alone.
@step(
    cache_policy=content_cache_policy(__name__),
    # a chunk is a part: its pictures would cost more than its work (the gathered dataset has
    # them), so the dashboard shows a chunk's metadata only
    enable_artifact_visualization=False,
    output_materializers={"chunk_dataset": DatasetMaterializer},
)
def ingest_chunk(chunk: dict) -> Annotated[Dataset, "chunk_dataset"]:
    """The chunk's images, decoded as ``ingest`` decodes them; a bad image stops the step with the
    chunk, the file and the rule named, and leaves no shard behind."""
    sink = get_step_context().get_output_artifact_uri("chunk_dataset")
    ds = read_chunk(chunk, sink=sink)
    logger.info("Chunk %s/%s: %d images", chunk["folder"], chunk["first"], len(ds))
    log_metadata({"samples": len(ds), "chunk": f"{chunk['folder']}/{chunk['first']}"})
    return ds
