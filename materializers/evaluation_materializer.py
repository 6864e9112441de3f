"""Materializer for :class:`bloodcell.evaluation.report.EvaluationReport`: JSON, confusion matrices,
reliability diagrams, risk-coverage curves, a table."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.evaluation import plots
from bloodcell.evaluation.report import EvaluationReport
from materializers._io import read_json, write_bytes, write_json, write_text


class EvaluationReportMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (EvaluationReport,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: EvaluationReport) -> None:
        write_json(self, "report.json", data.to_dict())

    def load(self, data_type: type[Any]) -> EvaluationReport:
        return EvaluationReport.from_dict(read_json(self, "report.json"))

    def compute_content_hash(self, data: Any) -> str:
        return hashlib.sha256(json.dumps(data.to_dict(), sort_keys=True).encode()).hexdigest()

    def extract_metadata(self, data: EvaluationReport) -> dict[str, Any]:
        meta: dict[str, Any] = dict(data.summary())
        for name, m in data.sets.items():
            meta[f"{name}_recall_per_class"] = {c: v["recall"] for c, v in m.per_class.items()}
        for name, m in data.external.items():
            meta[f"external_{name}_recall_per_class"] = m.recall_present
            meta[f"external_{name}_samples"] = m.n
        meta.update({k: v for k, v in data.params.items() if isinstance(v, (int, float, str))})
        for r in data.corruptions:
            if r["severity"]:
                meta[f"{r['corruption']}_s{r['severity']}_accuracy"] = r["accuracy"]
        return meta

    def save_visualizations(self, data: EvaluationReport) -> dict[str, VisualizationType]:
        out = {write_text(self, "metrics.md", data.markdown()): VisualizationType.MARKDOWN}
        for name, m in data.sets.items():
            png = plots.confusion_matrix_png(
                m.confusion, data.class_names, f"{name}: accuracy {m.accuracy:.4f}"
            )
            out[write_bytes(self, f"confusion_{name}.png", png)] = VisualizationType.IMAGE
        for name, m in data.external.items():
            png = plots.confusion_matrix_png(
                m.confusion,
                data.class_names,
                f"{name} (another lab): accuracy {m.accuracy:.4f}, "
                f"balanced {m.balanced_accuracy:.4f}",
                rows=m.present,
            )
            out[write_bytes(self, f"confusion_external_{name}.png", png)] = VisualizationType.IMAGE
        if data.trust:
            out[write_bytes(self, "reliability.png", plots.reliability_diagrams(data.trust))] = (
                VisualizationType.IMAGE
            )
            out[write_bytes(self, "risk_coverage.png", plots.risk_coverage_curves(data.trust))] = (
                VisualizationType.IMAGE
            )
        if data.corruptions:
            png = plots.corruption_curves(
                data.corruptions, f"accuracy under corruption (n={data.corruptions[0]['n']})"
            )
            out[write_bytes(self, "corruptions.png", png)] = VisualizationType.IMAGE
        return out
