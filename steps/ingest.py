"""Step 1: read the data source (class folders or an .npz) into a dataset artifact."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from bloodcell.data.dataset import Dataset
from bloodcell.data.ingest import read_source
from bloodcell.data.stain import stain_params
from bloodcell.data.tables import ingest_tables, shape_params
from materializers.dataset_materializer import DatasetMaterializer
from steps._guard import guard
from steps._metadata import log_code_version

logger = get_logger(__name__)


# Never cached: the files on disk are not part of ZenML's cache key. Its output's content
# hash is, so the steps after it are served from cache when the data is unchanged.
@step(enable_cache=False, output_materializers={"dataset": DatasetMaterializer})
def ingest(
    source: str,
    image_size: int = 96,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    stain_ranges: dict[str, list[float]] | None = None,
) -> Annotated[Dataset, "dataset"]:
    """Read a folder of class folders, a challenge ``.npz`` or a MedMNIST ``.npz``. The classes come
    from the folders (sorted, after ``class_map``) unless ``classes`` names them; ``stain_ranges``
    are the lab's normal per-channel means (default: PBC's; ``bloodcell profile`` proposes them)."""
    params = stain_params(stain_ranges)  # a malformed range fails before any image is read
    # a folder's images go straight into the output artifact's folder as shards, as they are decoded
    sink = get_step_context().get_output_artifact_uri("dataset")
    ds = read_source(source, image_size=image_size, classes=classes, class_map=class_map, sink=sink)
    return checked(ds, source, image_size, params)


def checked(
    ds: Dataset,
    source: str,
    image_size: int,
    params: dict[str, float],
    stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    """Log what was read, run the ``ingest`` expectation suite on it (``params``: the stain
    ranges' suite parameters; ``stats``: the images' channel means and stds where they are known
    already) and record its metadata: the one tail of ``ingest`` and ``gather_chunks``."""
    conversions = ds.info.get("conversions", {})
    logger.info(
        "Ingested %d images of %d classes %s from %s (%s), fingerprint %s, conversions %s",
        len(ds),
        len(ds.class_names),
        ds.class_names,
        source,
        ds.info["format"],
        ds.fingerprint[:12],
        conversions or "none",
    )
    log_code_version()
    guard(
        "ingest",  # image_size square RGB uint8, unique ids, labels 0..max_label, num_classes
        # classes each present, pixel std >= 2 (not blank), channel means in the stain ranges
        ingest_tables(ds, stats),
        **shape_params(ds),  # image_size, num_classes, max_label
        **params,  # mean_r_min, mean_r_max, ... from stain_ranges
    )
    log_metadata(
        {
            "samples": len(ds),
            "fingerprint": ds.fingerprint,
            "class_counts": ds.class_counts(),
            "class_names": ds.class_names,
            "image_size": image_size,
        }
    )
    return ds
