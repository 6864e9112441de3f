"""Online inference: a request's images in, each image's class and probabilities out, from the
model loaded once when the service starts. Deploy it with ``bloodcell serve`` (which also sets up
a local deployer), or with ZenML directly on a stack that has a deployer:

    zenml pipeline deploy pipelines.serving.serving_pipeline -n bloodcell -c configs/serve.yaml

``POST <url>/invoke`` with ``{"parameters": {"images": ["<base64 of an image file>", ...]}}`` and
``Authorization: Bearer <key>``; the page at ``<url>/`` does the same from a browser. The app's
pieces (start-up hook, ``/invoke``, limits, error format) are in ``bloodcell.serving.app``.
"""

from typing import Annotated, Any

from zenml import pipeline
from zenml.config import (
    AppExtensionSpec,
    DeploymentSettings,
    EndpointMethod,
    EndpointSpec,
    MiddlewareSpec,
)
from zenml.config.deployment_settings import DeploymentDefaultEndpoints, SecureHeadersConfig

from bloodcell.serving.app import (
    BodySizeLimit,
    build_invoke,
    install_error_format,
    load_served_model,
)
from steps.classify import classify

# relative to the source root (where `zenml init` ran), as ZenML requires
PAGE = "pipelines/serving_page"

# ZenML's default policy, plus blob: images: the page shows the files it sends without uploading
# them twice
CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; base-uri 'self'; form-action 'self'; font-src 'self'; "
    "frame-src 'self'"
)

DEPLOYMENT = DeploymentSettings(
    app_title="bloodcell classifier",
    app_description="Blood-cell images in, each image's class and class probabilities out.",
    dashboard_files_path=PAGE,
    secure_headers=SecureHeadersConfig(csp=CSP),
    # /submit would run a request in the background without our checks, storing its images: off
    include_default_endpoints=DeploymentDefaultEndpoints.ALL & ~DeploymentDefaultEndpoints.SUBMIT,
    custom_endpoints=[
        EndpointSpec(path="/invoke", method=EndpointMethod.POST, handler=build_invoke)
    ],
    custom_middlewares=[MiddlewareSpec(middleware=BodySizeLimit)],
    app_extensions=[AppExtensionSpec(extension=install_error_format)],
)


@pipeline(
    enable_cache=False,
    # a run per request: keep its bookkeeping light
    enable_step_logs=False,
    enable_pipeline_logs=False,
    enable_artifact_metadata=False,
    on_init=load_served_model,
    settings={"deployment": DEPLOYMENT, "deployer": {"generate_auth_key": True}},
)
def serving_pipeline(
    images: tuple[str, ...] = (), explain: int | None = None
) -> Annotated[dict[str, Any], "classification"]:
    return classify(images=images, explain=explain)


serving_pipeline.configure(
    enable_artifact_visualization=False
)  # not a decorator argument in ZenML 0.98
