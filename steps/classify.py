"""Serving step: classify a request's images with the model the service loaded at start-up (the
pipeline's ``on_init`` hook; ``pipeline_state``). Never cached (ZenML turns caching off for
deployments anyway)."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import get_step_context, step

from bloodcell.serving.model import ServingModel, images_for


@step(enable_cache=False)
def classify(
    images: list[str] | None = None, explain: int | None = None
) -> Annotated[dict[str, Any], "classification"]:
    """``images``: in the service, each image's ``sha256:<hex>`` (the service's ``/invoke`` has
    decoded them and hands the batch over in memory); in a plain run, base64 image files.
    ``explain``: the index of an image to compute an occlusion map for."""
    model: ServingModel = get_step_context().pipeline_state
    batch, digests = images_for(images, model.image_size, model.limits)
    return model.classify(batch, digests, explain)
