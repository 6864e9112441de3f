"""``bloodcell adapt``: run the adaptation pipeline for a new lab and export the adapted model.

It resolves the base version now (``production`` may move while the run goes), reads the lab's
folder once to propose its stain ranges (its cells are its lab's normal, ``bloodcell.data.stain``),
writes the pipeline config next to the output, runs ``pipelines.adaptation`` with ``zenml
pipeline run`` (so the new version has the usual lineage), then exports the new version's model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bloodcell import MODEL_NAME
from bloodcell.mlops.registry import (
    export_model,
    get_version,
    image_size_of,
    latest_with_model,
    model_artifact,
)
from bloodcell.mlops.runlog import RunFailed, failure_lines


def adaptation_config(
    base: int,
    data: str,
    image_size: int,
    stain_ranges: dict,
    checks: list[dict[str, Any]],
    name: str = MODEL_NAME,
    adaptation: dict[str, Any] | None = None,
    unlabelled: bool = False,
) -> dict[str, Any]:
    """The pipeline config for a lab folder ``data`` and check sets ``checks``: the adaptation
    pipeline's, or with ``unlabelled`` the recalibration pipeline's (batch norm from the lab's
    cells)."""
    lab = {"source": str(Path(data).resolve()), "image_size": image_size}
    steps: dict[str, Any] = {"ingest_external": {"parameters": {"external": checks}}}
    if unlabelled:
        steps["ingest_unlabeled"] = {"parameters": lab}
    else:
        steps["ingest"] = {"parameters": {**lab, "stain_ranges": stain_ranges}}
        steps["adapt"] = {"parameters": {"adaptation": adaptation or {}}}
    return {
        "model": {"name": name, "tags": ["adapted"]},
        "parameters": {"base_version": str(base), "base_model": name},
        "steps": steps,
    }


def run_adaptation(
    version: str,
    data: str,
    output: str,
    checks: list[str] | None = None,
    name: str = MODEL_NAME,
    unlabelled: bool = False,
) -> dict[str, Any]:
    """Adapt ``version`` of ``name`` to the labelled lab folder ``data`` (``unlabelled``: any
    folder of the lab's cells, batch norm only); ``checks``: labelled folders (``NAME=FOLDER`` or
    ``FOLDER``) the new version is scored on. Returns what was done."""
    from bloodcell.data.ingest import read_unlabeled
    from bloodcell.data.stain import profile

    if not output.endswith(".keras"):
        raise ValueError(f"{output}: the output must be a .keras file")
    base = get_version(version, name)
    needs = ["test"] if unlabelled else ["test", "balanced_train"]
    missing = [a for a in needs if base.get_artifact(a) is None]
    if missing:
        raise LookupError(
            f"model {name!r} version {base.number} has no {', '.join(map(repr, missing))} artifact "
            "(rule: adapt "
            "a version the training pipeline made; an adapted version holds neither: adapt its "
            "base version)"
        )
    model = model_artifact(base)
    if unlabelled and model is not None and model.run_metadata.get("batch_norm_layers") == 0:
        from bloodcell.model.adaptation import NO_BATCH_NORM

        raise ValueError(f"model {name!r} version {base.number}: {NO_BATCH_NORM}")
    size = image_size_of(base)
    ranges = profile(read_unlabeled(data, image_size=size).images)
    specs = []
    for i, item in enumerate(checks or []):
        label, _, folder = item.rpartition("=")
        specs.append({"name": label or f"check{i + 1}", "path": str(Path(folder).resolve())})
    config = Path(output).with_suffix(".adaptation.yaml")
    config.write_text(
        yaml.safe_dump(
            adaptation_config(base.number, data, size, ranges, specs, name, unlabelled=unlabelled),
            sort_keys=False,
        )
    )
    zenml = str(Path(sys.executable).parent / "zenml")
    source = "pipelines.adaptation." + (
        "recalibration_pipeline" if unlabelled else "adaptation_pipeline"
    )
    proc = subprocess.run(
        [zenml, "pipeline", "run", source, "-c", str(config)], capture_output=True, text=True
    )
    if proc.returncode:
        raise RunFailed(
            "the adaptation run failed (config "
            f"{config}):\n{failure_lines(proc.stdout + proc.stderr)}"
        )
    new = latest_with_model(name)
    exported = export_model(output, str(new.number), name)
    meta = new.run_metadata
    return {
        **exported,
        "base_version": base.number,
        "config": str(config),
        "checks": {
            s["name"]: (
                meta.get(f"external_{s['name']}_accuracy"),
                meta.get(f"external_{s['name']}_balanced_accuracy"),
            )
            for s in specs
        },
    }
