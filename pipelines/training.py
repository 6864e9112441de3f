"""The training pipeline: ingest -> filter_outliers -> split -> rebalance -> train -> fine_tune ->
evaluate -> promote.

Run it with ``zenml pipeline run pipelines.training.training_pipeline -c configs/quickstart.yaml``.
Every parameter comes from the YAML config.
"""

from zenml import pipeline

from steps.evaluate import evaluate
from steps.filter_outliers import filter_outliers
from steps.fine_tune import fine_tune
from steps.ingest import ingest
from steps.promote import promote
from steps.rebalance import rebalance
from steps.split import split
from steps.train import train


@pipeline(enable_cache=True)
def training_pipeline() -> None:
    dataset = ingest()
    filtered, _outliers = filter_outliers(dataset)
    train_set, val_set, test_set = split(filtered)
    balanced = rebalance(train_set, val_set, test_set)
    model, _history = train(balanced, val_set)
    tuned = fine_tune(model, balanced, val_set)
    report = evaluate(tuned, test_set)
    promote(report, test_set)
