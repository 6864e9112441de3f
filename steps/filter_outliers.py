"""Step 2: PCA outlier filter."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.outliers
from bloodcell.dataset import Dataset
from bloodcell.tables import filter_tables
from materializers import DatasetMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard

logger = get_logger(__name__)


@step(
    cache_policy=content_cache_policy(bloodcell.outliers),
    output_materializers={"filtered_dataset": DatasetMaterializer},
)
def filter_outliers(
    dataset: Dataset,
    n_components: int = 32,
    thumb: int = 24,
    z_threshold: float = 12.0,
    max_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[Annotated[Dataset, "filtered_dataset"], Annotated[pd.DataFrame, "outlier_scores"]]:
    """Remove samples whose PCA reconstruction error is extreme; report every sample's score."""
    result = bloodcell.outliers.filter_outliers(
        dataset, n_components=n_components, thumb=thumb, z_threshold=z_threshold,
        max_fraction=max_fraction, seed=seed,
    )
    removed = result.table[result.table.flagged]
    logger.info("Removed %d of %d samples as outliers: %s", len(removed), len(dataset), list(removed.id[:20]))
    log_metadata({
        "removed": len(removed),
        "removed_fraction": len(removed) / max(len(dataset), 1),
        "removed_ids": list(removed.id[:200]),
    })
    guard("filter_outliers", filter_tables(dataset, result.kept), max_fraction=max_fraction)
    return result.kept, result.table
