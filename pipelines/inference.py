"""Batch inference: ingest_unlabeled -> predict, with the model version named in the config.

    zenml pipeline run pipelines.inference.inference_pipeline -c configs/predict.yaml

The run, its input images and its predictions are linked to that model version.
"""

from zenml import pipeline

from steps.ingest_unlabeled import ingest_unlabeled
from steps.predict import predict


@pipeline(enable_cache=False)
def inference_pipeline() -> None:
    images = ingest_unlabeled()
    predict(images)
