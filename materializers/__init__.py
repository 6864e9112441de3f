"""ZenML materializers: arrays as .npy, metadata as JSON, models as .keras."""

from materializers.dataset_materializer import DatasetMaterializer
from materializers.evaluation_materializer import EvaluationReportMaterializer
from materializers.history_materializer import TrainingHistoryMaterializer
from materializers.keras_materializer import KerasModelMaterializer
from materializers.outlier_materializer import OutlierReportMaterializer
from materializers.validation_materializer import ValidationReportMaterializer

__all__ = [
    "DatasetMaterializer",
    "EvaluationReportMaterializer",
    "KerasModelMaterializer",
    "OutlierReportMaterializer",
    "TrainingHistoryMaterializer",
    "ValidationReportMaterializer",
]
