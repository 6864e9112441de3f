"""The training pipeline: ingest -> filter_outliers -> split -> rebalance -> train -> fine_tune ->
evaluate (with other labs' images from ingest_external) -> promote.

Run it with ``zenml pipeline run pipelines.training.training_pipeline -c configs/quickstart.yaml``.
Every parameter comes from the YAML config; what a config leaves out keeps the step's default
(docs/configuration.md says what the steps' defaults are). Each run makes a version of the model
``bloodcell-classifier``.

The data steps, and the pipeline parameter ``fan_out`` that reads the source a chunk at a time,
are ``pipelines.data``'s (the pipeline is dynamic for them: the chunks are known only once the
source has been listed).
"""

from typing import Any

from zenml import Model, pipeline

from bloodcell import MODEL_NAME
from pipelines.data import DATA_STEPS, clean_data
from steps.evaluate import evaluate
from steps.fine_tune import fine_tune
from steps.ingest_external import ingest_external
from steps.promote import promote
from steps.rebalance import rebalance
from steps.split import split
from steps.train import train

MODEL = Model(
    name=MODEL_NAME,
    description="Blood-cell image classifier made by the bloodcell ZenML training pipeline: "
    "RGB images in "
    "(0..255), one probability per class out. Each version's metadata names its classes, image "
    "size, data fingerprints and test metrics.",
    license="Code Apache-2.0; the trained weights carry the terms of the data in the version's "
    "lineage "
    "(PBC: CC BY 4.0, Acevedo et al. 2020)",
)

# every step the pipeline may run: the config's ``steps:`` blocks apply to each run of them
STEPS = [
    *DATA_STEPS,
    split,
    rebalance,
    train,
    fine_tune,
    evaluate,
    ingest_external,
    promote,
]


@pipeline(dynamic=True, enable_cache=True, model=MODEL, depends_on=STEPS)
def training_pipeline(fan_out: dict[str, Any] | None = None) -> None:
    train_set, val_set, test_set = split(clean_data(fan_out))
    balanced = rebalance(train_set, val_set, test_set)
    trained, _history = train(balanced, val_set)
    shipped = fine_tune(trained, balanced, val_set)
    report = evaluate(shipped, test_set, ingest_external(test_set))
    promote(report, test_set)
