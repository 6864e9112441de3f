"""Fan-out path, step 1a: list a folder source and cut it into chunks (``bloodcell.data.chunks``)
for ``ingest_chunk`` and ``score_chunk`` to read and score in parallel."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell.data.chunks import plan_chunks as plan

logger = get_logger(__name__)


# Never cached, as ``ingest``: it reads the file list, which is not part of ZenML's cache key.
# Each chunk's spec (its files' names, sizes and times) is the chunk steps' cache key instead.
@step(enable_cache=False)
def plan_chunks(
    source: str,
    chunk_size: int,
    image_size: int = 96,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
) -> Annotated[list[dict], "chunk_plan"]:
    """One spec a chunk: what ``ingest_chunk`` needs to read it, and its files' digest."""
    chunk_plan = plan(source, chunk_size, classes, class_map)
    sizes = np.array([len(c.files) for c in chunk_plan.chunks])
    logger.info(
        "%s: %d files of %d classes in %d chunks of %d to %d files (median %d)",
        source,
        int(sizes.sum()),
        len(chunk_plan.class_names),
        len(sizes),
        int(sizes.min()),
        int(sizes.max()),
        int(np.median(sizes)),
    )
    log_metadata(
        {
            "files": int(sizes.sum()),
            "chunks": len(sizes),
            "chunk_size": chunk_size,
            "largest_chunk": int(sizes.max()),
        }
    )
    return chunk_plan.specs(image_size, chunk_size)
