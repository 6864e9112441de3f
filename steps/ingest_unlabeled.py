"""Inference step 1: read images to classify (a folder, searched recursively, or an .npz), at the
size of the model version the pipeline runs with."""

from __future__ import annotations

from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from bloodcell.data.dataset import Dataset
from bloodcell.data.ingest import read_unlabeled
from bloodcell.data.tables import unlabeled_tables
from bloodcell.mlops.registry import image_size_of
from materializers.dataset_materializer import DatasetMaterializer
from steps._guard import guard
from steps._metadata import log_code_version

logger = get_logger(__name__)


@step(enable_cache=False, output_materializers={"images": DatasetMaterializer})
def ingest_unlabeled(source: str, image_size: int | None = None) -> Annotated[Dataset, "images"]:
    """Every image under ``source`` (labels, where present, are ignored), brought to ``image_size``
    (default: the model version's) and checked by the ``predict_input`` expectation suite (size,
    RGB, ids) before anything is predicted. Blank images and other stains are not errors here:
    ``predict`` flags each one (the model's referral rule) and the run goes on."""
    if image_size is None:
        image_size = image_size_of(get_step_context().model)
    # the images go straight into the output artifact's folder as shards, as they are decoded
    ds = read_unlabeled(
        source, image_size=image_size, sink=get_step_context().get_output_artifact_uri("images")
    )
    logger.info(
        "Read %d images to classify from %s at %dx%d, fingerprint %s, conversions %s",
        len(ds),
        source,
        image_size,
        image_size,
        ds.fingerprint[:12],
        ds.info["conversions"] or "none",
    )
    log_code_version()
    guard(
        "predict_input",  # the model's input: image_size square, RGB uint8, unique ids
        unlabeled_tables(ds),
        image_size=image_size,
    )
    log_metadata({"samples": len(ds), "fingerprint": ds.fingerprint, "source": str(source)})
    return ds
