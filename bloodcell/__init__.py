"""Plain, tested functions behind the blood-cell ZenML pipeline.

The ZenML steps in ``steps/`` are thin wrappers around the functions in this package.
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
"""Class index = position in this tuple (alphabetical folder order, as in BloodMNIST)."""

__all__ = ["CLASS_NAMES"]
