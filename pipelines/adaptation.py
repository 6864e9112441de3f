"""Adaptation to a new lab: ingest (the lab's labelled cells) -> adapt (a model version's model,
its training data replayed; its referral rule refitted on the lab's check sets, or the base
version's val split) -> evaluate (the base version's PBC test split, and the lab's check
sets from ingest_external). Each run makes a new version of ``bloodcell-classifier`` with lineage
to the base version's artifacts and the lab's data; it is not promoted: check it, then promote it
by hand (``zenml model version update bloodcell-classifier N --stage production``).

``recalibration_pipeline``: the same without labels: ingest_unlabeled (the lab's cells) ->
recalibrate (batch norm from them) -> evaluate.

    bloodcell adapt --version production --data FOLDER --output model.keras   (writes the config,
                                                                             runs this)
    bloodcell adapt --version production --data FOLDER --output model.keras --unlabelled
    zenml pipeline run pipelines.adaptation.adaptation_pipeline -c my_adaptation.yaml
"""

from zenml import Model, pipeline

from bloodcell import MODEL_NAME
from bloodcell.mlops.registry import get_version, model_artifact
from pipelines.training import MODEL
from steps.adapt import adapt
from steps.evaluate import evaluate
from steps.ingest import ingest
from steps.ingest_external import ingest_external
from steps.ingest_unlabeled import ingest_unlabeled
from steps.recalibrate import recalibrate


def _shipped_model(name: str, version: str):
    """The base version's model artifact, looked up now (when the run is compiled), under its
    current or an earlier name: versions made before 0.2 hold it as ``tuned_model``."""
    mv = get_version(version, name)
    artifact = model_artifact(mv)
    if artifact is None:
        raise LookupError(f"model {name!r} version {mv.number} holds no model to adapt")
    return artifact


@pipeline(enable_cache=True, model=MODEL)
def adaptation_pipeline(base_version: str = "production", base_model: str = MODEL_NAME) -> None:
    base = Model(name=base_model, version=base_version)
    shipped = _shipped_model(base_model, base_version)
    lab = ingest()
    test = base.get_artifact("test")
    checks = ingest_external(test)
    model = adapt(
        shipped,
        lab,
        base.get_artifact("balanced_train"),
        base.get_artifact("val"),
        checks,
    )
    evaluate(model, test, checks)


@pipeline(enable_cache=True, model=MODEL)
def recalibration_pipeline(base_version: str = "production", base_model: str = MODEL_NAME) -> None:
    base = Model(name=base_model, version=base_version)
    shipped = _shipped_model(base_model, base_version)
    model = recalibrate(
        shipped,
        ingest_unlabeled(),
        base.get_artifact("balanced_train"),
        base.get_artifact("val"),
    )
    test = base.get_artifact("test")
    evaluate(model, test, ingest_external(test))
