"""Materializer for :class:`bloodcell.data.validation.ValidationReport`: JSON plus an HTML results
table."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.data.validation import ValidationReport
from materializers._io import read_json, write_json, write_text


class ValidationReportMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ValidationReport,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: ValidationReport) -> None:
        write_json(self, "validation.json", data.to_dict())

    def load(self, data_type: type[Any]) -> ValidationReport:
        return ValidationReport.from_dict(read_json(self, "validation.json"))

    def compute_content_hash(self, data: ValidationReport) -> str:
        return hashlib.sha256(
            json.dumps(data.to_dict(), sort_keys=True, default=str).encode()
        ).hexdigest()

    def extract_metadata(self, data: ValidationReport) -> dict[str, Any]:
        return {
            "step": data.step,
            "success": data.success,
            "expectations": len(data.results),
            "failed": len(data.failures),
            "failed_expectations": [r.describe() for r in data.failures][:20],
        }

    def save_visualizations(self, data: ValidationReport) -> dict[str, VisualizationType]:
        return {write_text(self, "validation.html", data.html()): VisualizationType.HTML}
