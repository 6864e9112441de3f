"""Step: read other labs' labelled images, for evaluation only (never for training).

Never cached, like ``ingest``: the folders are not in ZenML's cache key. Its output's content hash
is, so ``evaluate`` is served from cache while neither the model nor these images change.
"""

from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell.data.dataset import Dataset
from bloodcell.data.ingest import read_external
from bloodcell.data.tables import external_tables, shape_params
from materializers.dataset_materializer import DatasetMaterializer
from steps._guard import guard

logger = get_logger(__name__)


@step(enable_cache=False, output_materializers={"external": DatasetMaterializer})
def ingest_external(
    like: Dataset, external: list[dict[str, Any]] | None = None
) -> Annotated[Dataset, "external"]:
    """The ``external`` sets (each ``{name, path, class_map}``: a folder of class folders) at the
    image size of ``like`` (the test split), as one dataset; empty when none are configured."""
    ds = read_external(external, image_size=int(like.images.shape[1]))
    for name, part in ds.info["sets"].items():
        logger.info(
            "External set %s: %d images from %s", name, part["stop"] - part["start"], part["path"]
        )
    guard(
        "ingest_external",  # image_size square, unique ids, labels 0..max_label, pixel std >= 2
        external_tables(ds),
        **shape_params(ds),  # image_size, num_classes, max_label
    )
    log_metadata(
        {
            "samples": len(ds),
            "fingerprint": ds.fingerprint,
            "sets": ds.info["sets"],
            "class_names": ds.class_names,
        }
    )
    return ds
