"""Step 4: bring every class of the train split to the size of the largest by augmentation."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.logger import get_logger

import bloodcell.augment
from bloodcell.dataset import Dataset
from bloodcell.tables import rebalance_tables
from materializers import DatasetMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard

logger = get_logger(__name__)


@step(
    cache_policy=content_cache_policy(bloodcell.augment),
    output_materializers={"balanced_train": DatasetMaterializer},
)
def rebalance(
    train: Dataset,
    val: Dataset,
    test: Dataset,
    engine: str = "keras",
    multiplier: float = 1.0,
    seed: int = 0,
    group: int = 32,
    randaugment: dict[str, Any] | None = None,
    augmix: dict[str, Any] | None = None,
    shift: float = 0.05,
    zoom: float = 0.08,
) -> Annotated[Dataset, "balanced_train"]:
    """Originals kept; minority classes topped up with RandAugment / AugMix variants.

    ``val`` and ``test`` are only read to check that nothing from them leaks into training."""
    balanced = bloodcell.augment.rebalance(
        train, engine=engine, multiplier=multiplier, seed=seed, group=group,
        randaugment=randaugment, augmix=augmix, shift=shift, zoom=zoom,
    )
    logger.info("Rebalanced %d -> %d samples (%d generated with %s)", len(train), len(balanced), balanced.info.get("generated", 0), engine)
    log_metadata({"before": train.class_counts(), "after": balanced.class_counts(), "generated": int(balanced.info.get("generated", 0))})
    guard("rebalance", rebalance_tables(train, balanced, set(val.ids) | set(test.ids)))
    return balanced
