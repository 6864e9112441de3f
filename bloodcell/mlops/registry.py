"""The ZenML Model Control Plane, from outside a pipeline: pick a version of the model, load or
export the model it holds.

``latest`` means the newest version that holds a model: a run that failed before ``fine_tune``
still made a version (ZenML creates it when the run starts), and that empty version is skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from bloodcell import MODEL_ARTIFACT, MODEL_NAME, OLD_MODEL_ARTIFACTS

logger = logging.getLogger("bloodcell.registry")

VERSION_HELP = (
    "production (default), staging, latest (the newest version that holds a model) or a "
    "version number"
)


def get_version(version: str = "production", name: str = MODEL_NAME):
    """``production``, ``staging``, ``latest`` or a version number -> ``ModelVersionResponse``."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    version = str(version).lower()
    if version == "latest":
        return latest_with_model(name)
    stages = {s.value: s for s in ModelStages if s != ModelStages.LATEST}
    key: Any = int(version) if version.isdigit() else stages.get(version)
    if key is None:
        raise ValueError(f"version {version!r}: give {VERSION_HELP}")
    try:
        return Client().get_model_version(name, key)
    except KeyError:
        raise LookupError(
            f"model {name!r} has no version {version!r}; list them with `zenml model version list "
            f"{name}`"
        ) from None


def model_artifact(version):
    """A model version's shipped model artifact (not loaded), under its current name or an earlier
    one (``OLD_MODEL_ARTIFACTS``); None if it holds none. ``version``: a model version response."""
    for name in (MODEL_ARTIFACT, *OLD_MODEL_ARTIFACTS):
        artifact = version.get_artifact(name)
        if artifact is not None:
            return artifact
    return None


def latest_with_model(name: str = MODEL_NAME):
    """The newest version of ``name`` that holds a model (``MODEL_ARTIFACT``); newer versions
    without one (runs that failed or stopped early) are skipped, and the log says so."""
    from zenml.client import Client

    skipped = []
    page = 1
    while True:
        versions = Client().list_model_versions(
            model=name, sort_by="desc:number", page=page, size=50
        )
        for mv in versions.items:
            if model_artifact(mv) is not None:
                if skipped:
                    logger.warning(
                        "model %s: latest version with a model is %s; newer version(s) %s hold "
                        "none "
                        "(runs that failed before fine_tune)",
                        name,
                        mv.number,
                        skipped,
                    )
                return mv
            skipped.append(mv.number)
        if page >= versions.total_pages:
            break
        page += 1
    raise LookupError(
        f"model {name!r} has no version that holds a model ({len(skipped)} version(s), none with a "
        f"{MODEL_ARTIFACT!r} artifact); train one with `make run`"
    )


def image_size_of(mv) -> int:
    """The image size a model version's model takes: from its model artifact's metadata (the
    materializer records the input shape), else the version's ``image_size``, else 96. A run whose
    ingest was cached logs no ``image_size`` on its new version, so the artifact comes first."""
    artifact = model_artifact(mv)
    shape = artifact.run_metadata.get("input_shape") if artifact is not None else None
    if shape and len(shape) == 4 and int(shape[1]) > 0:
        return int(shape[1])
    return int(mv.run_metadata.get("image_size", 96))


def version_with_model(version: str = "production", name: str = MODEL_NAME):
    """The model version and its model artifact (not loaded); a clear error if it holds none."""
    mv = get_version(version, name)
    artifact = model_artifact(mv)
    if artifact is None:
        raise LookupError(
            f"model {name!r} version {mv.number} holds no model (no {MODEL_ARTIFACT!r} artifact: "
            "its run failed before fine_tune); `--version latest` takes the newest version that "
            "has one"
        )
    return mv, artifact


def load_version_model(version: str = "production", name: str = MODEL_NAME):
    """The model version and the model it holds."""
    mv, artifact = version_with_model(version, name)
    return mv, artifact.load()


def export_model(
    output: str, version: str = "production", name: str = MODEL_NAME
) -> dict[str, Any]:
    """Write the version's model as one ``.keras`` file (written aside, then moved into place)."""
    if not output.endswith(".keras"):
        raise ValueError(f"{output}: the output must be a .keras file")
    mv, model = load_version_model(version, name)
    tmp = output[: -len(".keras")] + ".partial.keras"
    model.save(tmp)
    os.replace(tmp, output)
    meta = mv.run_metadata
    return {
        "name": name,
        "version": mv.number,
        "stage": mv.stage,
        "output": output,
        "plain_accuracy": meta.get("plain_accuracy"),
        "noisy_accuracy": meta.get("noisy_accuracy"),
    }
