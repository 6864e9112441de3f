"""Deploy and stop a serving pipeline with ZenML's deployer.

The pipeline is the caller's: ``deploy`` takes it (a ZenML pipeline, or its source path such as the
CLI's default) and sets its start-up hook's options and deployer settings. Its ``on_init`` must be
:func:`bloodcell.serving.app.load_served_model`. This package never names the project's pipelines:
they import it, not the other way round.

ZenML's default stack has no deployer. If the active stack has none, ``deploy`` registers (once)
a local deployer, ``bloodcell-local-deployer``, and a stack ``<active>-serve`` made of the active
stack's components plus that deployer, and deploys on it without changing the active stack. The
local deployer runs the service as a process on this machine, with this process's working
directory and environment (so its ZenML store and source root are this one's).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bloodcell import MODEL_NAME
from bloodcell.serving.app import load_served_model, use_sqlite_wal
from bloodcell.serving.model import Limits

DEFAULT_NAME = "bloodcell"
DEPLOYER = "bloodcell-local-deployer"
DEFAULT_PORT = 8000


def deployer_stack() -> tuple[str, list[str]]:
    """The stack to deploy on, and what was registered to make it (empty if nothing)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    active = client.active_stack_model
    if active.components.get(StackComponentType.DEPLOYER):
        return active.name, []
    registered = []
    try:
        deployer = client.get_stack_component(
            StackComponentType.DEPLOYER, DEPLOYER, allow_name_prefix_match=False
        )
    except KeyError:
        deployer = client.create_stack_component(DEPLOYER, "local", StackComponentType.DEPLOYER, {})
        registered.append(
            f"deployer {DEPLOYER!r} (flavor local: runs the service as a process on this machine)"
        )
    wanted = {kind: [c.id for c in comps] for kind, comps in active.components.items()}
    wanted[StackComponentType.DEPLOYER] = [deployer.id]
    name = f"{active.name}-serve"
    try:
        stack = client.get_stack(name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(name, components={kind: ids[0] for kind, ids in wanted.items()})
        registered.append(
            f"stack {name!r} (stack {active.name!r} plus that deployer; "
            "your active stack is unchanged)"
        )
        return name, registered
    have = {kind: [c.id for c in comps] for kind, comps in stack.components.items()}
    if have != wanted:
        client.update_stack(name, component_updates={kind: ids[0] for kind, ids in wanted.items()})
        registered.append(
            f"stack {name!r} updated to stack {active.name!r}'s components plus that deployer"
        )
    return name, registered


@contextlib.contextmanager
def _on_stack(name: str) -> Iterator[None]:
    """Make ``name`` the active stack for this process only (ZenML reads ZENML_ACTIVE_STACK_ID
    first); the configured active stack is not touched."""
    from zenml.client import Client
    from zenml.constants import ENV_ZENML_ACTIVE_STACK_ID

    old = os.environ.get(ENV_ZENML_ACTIVE_STACK_ID)
    os.environ[ENV_ZENML_ACTIVE_STACK_ID] = str(
        Client().get_stack(name, allow_name_prefix_match=False).id
    )
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_ZENML_ACTIVE_STACK_ID, None)
        else:
            os.environ[ENV_ZENML_ACTIVE_STACK_ID] = old


def _check_model(version: str, model_name: str, model_path: str | None) -> str:
    if model_path:
        if not Path(model_path).is_file() or not model_path.endswith(".keras"):
            raise FileNotFoundError(f"{model_path}: not a .keras model file")
        return f"model file {Path(model_path).resolve()}"
    from bloodcell.mlops.registry import version_with_model

    mv, _ = version_with_model(version, model_name)
    return f"{model_name} version {mv.number} ({mv.stage or 'no stage'}; asked for {version!r})"


def serving_pipeline(pipeline: Any) -> Any:
    """``pipeline`` as a ZenML pipeline: itself, or the one its source path (``module.name``, from
    the source root) names. A pipeline whose start-up hook is not ``load_served_model`` is refused:
    the hook options ``deploy`` passes would not reach the service."""
    from zenml.pipelines.pipeline_definition import Pipeline
    from zenml.utils import source_utils

    if isinstance(pipeline, str):
        pipeline = source_utils.load(pipeline)
    if not isinstance(pipeline, Pipeline):
        raise ValueError(f"{pipeline!r} is not a ZenML pipeline")
    hook = pipeline.configuration.init_hook_source
    wanted = f"{load_served_model.__module__}.{load_served_model.__name__}"
    if hook is None or hook.import_path != wanted:
        raise ValueError(
            f"pipeline {pipeline.name!r}: its on_init hook is "
            f"{hook.import_path if hook else None!r}, not {wanted!r}"
        )
    return pipeline


def deploy(
    pipeline: Any,
    version: str = "production",
    model_name: str = MODEL_NAME,
    name: str = DEFAULT_NAME,
    host: str = "127.0.0.1",
    port: int | None = None,
    model_path: str | None = None,
    limits: Limits | None = None,
    cache_python_packages: bool = True,
    sqlite_wal: bool = True,
    timeout: float = 300,
) -> dict[str, Any]:
    """Deploy (or redeploy) ``pipeline`` (see :func:`serving_pipeline`) as the service and wait
    until it answers ``/health`` (the model is loaded by then). Returns url, key, pid, the model
    it serves, what was registered and the store's journal mode. ``cache_python_packages``,
    ``sqlite_wal``: see ``bloodcell.serving.app``."""
    from zenml.client import Client
    from zenml.deployers.exceptions import DeployerError
    from zenml.enums import StackComponentType

    pipe = serving_pipeline(pipeline)
    limits = limits or Limits()
    serving = _check_model(version, model_name, model_path)
    stack, registered = deployer_stack()
    hook = {
        "version": str(version),
        "model_name": model_name,
        "model_path": str(Path(model_path).resolve()) if model_path else None,
        "max_images": limits.max_images,
        "max_image_bytes": limits.max_image_bytes,
        "max_pixels": limits.max_pixels,
        "max_body_bytes": limits.max_body_bytes,
        "cache_python_packages": cache_python_packages,
        "sqlite_wal": sqlite_wal,
    }
    journal = use_sqlite_wal() if sqlite_wal else None
    deployer: dict[str, Any] = {"generate_auth_key": True}
    flavor = Client().get_stack(stack).components[StackComponentType.DEPLOYER][0].flavor_name
    if flavor == "local":  # a busy port is an error when asked for, else the next free one is taken
        deployer.update(address=host, port=port or DEFAULT_PORT, allocate_port_if_busy=port is None)
    pipe = pipe.with_options(on_init_kwargs=hook, settings={"deployer": deployer})
    try:
        with _on_stack(stack):
            pipe.deploy(deployment_name=name, timeout=int(timeout))
    except DeployerError as exc:  # e.g. the port asked for is busy
        raise RuntimeError(f"deployment {name!r} failed: {exc}") from exc
    deployment = Client().get_deployment(name)
    pid = (deployment.deployment_metadata or {}).get("pid")
    _wait_healthy(deployment, pid, timeout)
    return {
        "name": name,
        "url": deployment.url,
        "key": deployment.auth_key,
        "pid": pid,
        "stack": stack,
        "serving": serving,
        "registered": registered,
        "journal": journal,
    }


def _wait_healthy(deployment, pid: int | None, timeout: float) -> None:
    import psutil
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{deployment.url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if pid and not _alive(pid, psutil):
            break
        time.sleep(0.5)
    log = (deployment.deployment_metadata or {}).get("log_file")
    tail = (
        Path(log).read_text(errors="replace").splitlines()[-30:]
        if log and Path(log).is_file()
        else []
    )
    with contextlib.suppress(Exception):
        stop(deployment.name)
    raise RuntimeError(
        f"deployment {deployment.name!r} did not become healthy within {timeout:.0f} s"
        + ("; its log ends:\n" + "\n".join(tail) if tail else "")
    )


def _alive(pid: int, psutil) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop(name: str = DEFAULT_NAME, timeout: float = 30) -> int | None:
    """Deprovision the deployment (its process ends; the record and key stay for a later deploy).
    Returns the pid it had, after making sure that process is gone."""
    import psutil
    from zenml.client import Client
    from zenml.deployers.exceptions import DeployerError

    deployment = Client().get_deployment(name)
    pid = (deployment.deployment_metadata or {}).get("pid")
    try:
        Client().deprovision_deployment(name, timeout=int(timeout))
    except DeployerError as exc:
        raise RuntimeError(f"deployment {name!r}: deprovisioning failed: {exc}") from exc
    deadline = time.monotonic() + timeout
    while pid and _alive(pid, psutil):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"deployment {name!r}: process {pid} still running after deprovisioning"
            )
        time.sleep(0.2)
    return pid
