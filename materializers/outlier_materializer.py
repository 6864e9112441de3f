"""Materializer for :class:`bloodcell.data.outliers.OutlierReport`: a CSV table, .npy images,
contact sheets."""

from __future__ import annotations

import hashlib
import io
from typing import Any, ClassVar

import pandas as pd
from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.data.outliers import OutlierReport
from bloodcell.evaluation import plots
from materializers._io import read_npy, read_text, write_bytes, write_npy, write_text


class OutlierReportMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (OutlierReport,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: OutlierReport) -> None:
        write_text(self, "scores.csv", data.table.to_csv(index=False))
        write_npy(self, "removed_images.npy", data.removed_images)
        write_npy(self, "borderline_images.npy", data.borderline_images)

    def load(self, data_type: type[Any]) -> OutlierReport:
        table = pd.read_csv(
            io.StringIO(read_text(self, "scores.csv")),
            keep_default_na=False,
            dtype={"reason": str, "id": str},
        )
        return OutlierReport(
            table=table,
            removed_images=read_npy(self, "removed_images.npy"),
            borderline_images=read_npy(self, "borderline_images.npy"),
        )

    def compute_content_hash(self, data: OutlierReport) -> str:
        return hashlib.sha256(data.table.to_csv(index=False).encode()).hexdigest()

    def extract_metadata(self, data: OutlierReport) -> dict[str, Any]:
        removed = data.removed
        return {
            "samples": len(data.table),
            "removed": len(removed),
            "removed_fraction": len(removed) / max(len(data.table), 1),
            "borderline_kept": int(data.table.borderline.sum()),
            "removed_by_reason": {str(k): int(v) for k, v in removed.reason.value_counts().items()},
            "removed_ids": list(removed.id[:100]),
        }

    def save_visualizations(self, data: OutlierReport) -> dict[str, VisualizationType]:
        removed = data.removed.sort_values("score", ascending=False)
        border = data.table[data.table.borderline].sort_values("score", ascending=False)
        out = {}
        for name, images, rows in (
            ("removed", data.removed_images, removed),
            ("borderline_kept", data.borderline_images, border),
        ):
            captions = [
                f"{r.id[-18:]}\n{r.reason or f'score {r.score:.1f}'}" for r in rows.itertuples()
            ]
            png = plots.image_strip(images, captions, max_images=len(images))
            out[write_bytes(self, f"{name}.png", png)] = VisualizationType.IMAGE
        cols = [
            "id",
            "label",
            "score",
            "reason",
            *[c for c in data.table.columns if c.endswith("_z")],
            "duplicate_group",
        ]
        out[write_text(self, "removed.csv", removed[cols].to_csv(index=False))] = (
            VisualizationType.CSV
        )
        return out
