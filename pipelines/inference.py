"""Batch inference: ingest_unlabeled -> predict, with a version of ``bloodcell-classifier``
(``production`` unless the config's ``model: {name: ..., version: ...}`` says otherwise).

    zenml pipeline run pipelines.inference.inference_pipeline -c configs/predict.yaml

The run, its input images and its predictions are linked to that model version.
"""

from zenml import Model, pipeline

from bloodcell import MODEL_NAME
from steps.ingest_unlabeled import ingest_unlabeled
from steps.predict import predict


@pipeline(enable_cache=False, model=Model(name=MODEL_NAME, version="production"))
def inference_pipeline() -> None:
    images = ingest_unlabeled()
    predict(images)
