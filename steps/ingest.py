"""Step 1: read the image source into one dataset artifact with a content fingerprint."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell.dataset import Dataset
from bloodcell.ingest import read_source
from bloodcell.tables import ingest_tables
from materializers.dataset_materializer import DatasetMaterializer
from steps._guard import guard
from steps._model import log_code_version

logger = get_logger(__name__)


# Never cached: the files on disk are not part of ZenML's cache key. Its output's content
# hash is, so the steps after it are served from cache when the data is unchanged.
@step(enable_cache=False, output_materializers={"dataset": DatasetMaterializer})
def ingest(source: str, image_size: int = 96) -> Annotated[Dataset, "dataset"]:
    """Read a folder of class folders, a challenge ``.npz`` or a MedMNIST ``.npz``."""
    ds = read_source(source, image_size=image_size)
    conversions = ds.info.get("conversions", {})
    logger.info(
        "Ingested %d images from %s (%s), fingerprint %s, conversions %s",
        len(ds), source, ds.info["format"], ds.fingerprint[:12], conversions or "none",
    )
    log_code_version()
    guard("ingest", ingest_tables(ds))
    log_metadata({"samples": len(ds), "fingerprint": ds.fingerprint, "class_counts": ds.class_counts()})
    return ds
