"""Step 2: outlier filter (PCA scores, texture, colour, near-duplicate groups, reviewed lists)."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.data.outliers
from bloodcell.data.dataset import Dataset
from bloodcell.data.outliers import OutlierConfig, OutlierReport
from bloodcell.data.tables import filter_tables
from materializers.dataset_materializer import DatasetMaterializer
from materializers.outlier_materializer import OutlierReportMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard

logger = get_logger(__name__)

_DEFAULT = OutlierConfig()  # the step's defaults are the filter's own: written there, once


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={
        "filtered_dataset": DatasetMaterializer,
        "outlier_report": OutlierReportMaterializer,
    },
)
def filter_outliers(
    dataset: Dataset,
    # ImageFeatures, one a chunk (typed Any: ZenML checks a parameter's type with pydantic)
    features: tuple[Any, ...] = (),
    n_components: int = _DEFAULT.n_components,
    thumb: int = _DEFAULT.thumb,
    z_threshold: float = _DEFAULT.z_threshold,
    borderline_z: float = _DEFAULT.borderline_z,
    duplicate_group_size: int = _DEFAULT.duplicate_group_size,
    max_fraction: float = _DEFAULT.max_fraction,
    always_keep: list[str] | None = None,
    always_drop: list[str] | None = None,
    seed: int = _DEFAULT.seed,
) -> tuple[Annotated[Dataset, "filtered_dataset"], Annotated[OutlierReport, "outlier_report"]]:
    """Remove what is not a stained blood-cell image; report every sample's scores and why.
    ``features``: the per-image features the fan-out path's chunks computed (``score_chunk``);
    without them (the single path) they are computed here, from the images."""
    # the parameters are OutlierConfig's fields, with its defaults (tests/test_config_options.py)
    given = {
        k: v for k, v in locals().items() if k not in ("dataset", "features") and v is not None
    }
    cfg = OutlierConfig.from_dict(given)
    result = bloodcell.data.outliers.filter_outliers(dataset, cfg, features=features or None)
    removed = result.report.removed
    logger.info(
        "Removed %d of %d samples as outliers (%d borderline kept for review): %s",
        len(removed),
        len(dataset),
        int(result.table.borderline.sum()),
        list(removed.id[:20]),
    )
    log_metadata({"removed": len(removed), "removed_fraction": len(removed) / max(len(dataset), 1)})
    guard(
        "filter_outliers",  # removed share <= max_fraction overall, <= 2 * max_fraction a class
        filter_tables(dataset, result.kept),
        max_fraction=max_fraction,
    )
    return result.kept, result.report
