"""Inference step 1: read images to classify (a folder, searched recursively, or an .npz)."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step
from zenml.logger import get_logger

from bloodcell.dataset import Dataset
from bloodcell.ingest import read_unlabeled
from bloodcell.tables import unlabeled_tables
from materializers.dataset_materializer import DatasetMaterializer
from steps._guard import guard
from steps._model import log_code_version

logger = get_logger(__name__)


@step(enable_cache=False, output_materializers={"images": DatasetMaterializer})
def ingest_unlabeled(source: str, image_size: int = 96) -> Annotated[Dataset, "images"]:
    """Every image under ``source`` (labels, where present, are ignored), checked by the
    ``predict_input`` expectation suite before anything is predicted."""
    ds = read_unlabeled(source, image_size=image_size)
    logger.info("Read %d images to classify from %s, fingerprint %s, conversions %s", len(ds), source,
                ds.fingerprint[:12], ds.info["conversions"] or "none")
    log_code_version()
    guard("predict_input", unlabeled_tables(ds))
    log_metadata({"samples": len(ds), "fingerprint": ds.fingerprint, "source": str(source)})
    return ds
