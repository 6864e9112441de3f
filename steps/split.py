"""Step 3: stratified, seeded train/val/test split."""

from __future__ import annotations

from typing import Annotated

from zenml import log_metadata, step

import bloodcell.data.split
from bloodcell.data.dataset import Dataset
from bloodcell.data.tables import split_tables
from materializers.dataset_materializer import DatasetMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={
        "train": DatasetMaterializer,
        "val": DatasetMaterializer,
        "test": DatasetMaterializer,
    },
)
def split(
    dataset: Dataset, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> tuple[Annotated[Dataset, "train"], Annotated[Dataset, "val"], Annotated[Dataset, "test"]]:
    """Split 80/10/10 (by default) keeping the class proportions of the whole."""
    train, val, test = bloodcell.data.split.stratified_split(
        dataset, val_fraction, test_fraction, seed
    )
    expected = {
        "train": 1 - val_fraction - test_fraction,
        "val": val_fraction,
        "test": test_fraction,
    }
    guard(
        "split",  # class counts within 2 samples of their share, sizes within 1 point, no leaks
        split_tables(dataset, {"train": train, "val": val, "test": test}, expected),
    )
    log_metadata({"train": len(train), "val": len(val), "test": len(test)})
    return train, val, test
