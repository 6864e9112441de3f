"""Plain, tested functions behind the blood-cell ZenML pipeline, in subpackages that follow it:

- ``data``: reading sources, shards, the dataset type, stain, outliers, split, GX suites;
- ``augment``: rebalancing (RandAugment + AugMix) and online augmentation;
- ``model``: networks, training, packaging (calibration, the referral rule), prediction;
- ``evaluation``: test sets, corruptions, other labs, reliability, plots, promotion;
- ``mlops``: ZenML's model registry, lineage, run log, schedules, the GPU step operator;
- ``serving``: the served model, its HTTP app and deployment;
- ``cli``: the ``bloodcell`` command, on top of all of them.

Each imports only those above it in this list (``tests/test_layers.py``). The ZenML steps in
``steps/`` are thin wrappers around these functions; ``pipelines/`` composes the steps.
"""

CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
"""PBC's 8 classes; class index = position in this tuple (alphabetical folder order, as in BloodMNIST)."""

MODEL_NAME = "bloodcell-classifier"
"""The model in ZenML's Model Control Plane that every training run makes a version of."""

MODEL_ARTIFACT = "tuned_model"
"""The training pipeline's shipped model: the artifact a model version is used through."""

MIN_UNLABELLED = 32
"""The fewest of a lab's unlabelled cells batch-norm statistics are recomputed from."""

__all__ = ["CLASS_NAMES", "MIN_UNLABELLED", "MODEL_ARTIFACT", "MODEL_NAME"]
