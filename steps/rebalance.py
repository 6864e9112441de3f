"""Step 4: bring every class of the train split to the size of the largest by augmentation."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

import bloodcell.augment.rebalance
from bloodcell.augment.rebalance import RebalanceConfig
from bloodcell.data.dataset import Dataset
from bloodcell.data.tables import rebalance_tables
from materializers.dataset_materializer import DatasetMaterializer
from steps._cache import content_cache_policy
from steps._guard import guard

logger = get_logger(__name__)

_DEFAULT = RebalanceConfig()  # the step's defaults are the function's own: written there, once


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={"balanced_train": DatasetMaterializer},
)
def rebalance(
    train: Dataset,
    val: Dataset,
    test: Dataset,
    engine: str = _DEFAULT.engine,
    multiplier: float = _DEFAULT.multiplier,
    seed: int = _DEFAULT.seed,
    group: int = _DEFAULT.group,
    randaugment: dict[str, Any] | None = None,
    augmix: dict[str, Any] | None = None,
    shift: float = _DEFAULT.shift,
    zoom: float = _DEFAULT.zoom,
) -> Annotated[Dataset, "balanced_train"]:
    """Originals kept; minority classes topped up with RandAugment / AugMix variants.

    ``val`` and ``test`` are only read to check that nothing from them leaks into training."""
    # the parameters are RebalanceConfig's fields, with its defaults (tests/test_config_options.py)
    given = {
        k: v for k, v in locals().items() if k not in ("train", "val", "test") and v is not None
    }
    cfg = RebalanceConfig.from_dict(given)
    sink = get_step_context().get_output_artifact_uri(
        "balanced_train"
    )  # large generated sets go there as shards
    balanced = bloodcell.augment.rebalance.rebalance(train, cfg, sink=sink)
    generated = int(balanced.info.get("generated", 0))
    logger.info(
        "Rebalanced %d -> %d samples (%d generated with %s)",
        len(train),
        len(balanced),
        generated,
        engine,
    )
    log_metadata(
        {"before": train.class_counts(), "after": balanced.class_counts(), "generated": generated}
    )
    guard(
        "rebalance",  # each class >= 0.99 of the largest, originals all kept, no val/test source
        rebalance_tables(train, balanced, set(val.ids) | set(test.ids)),
    )
    return balanced
