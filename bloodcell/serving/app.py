"""The serving deployment's web app, in ZenML's deployment server: the start-up hook that loads the
model once, ``POST /invoke`` (ZenML's own request and response shape, with real 4xx answers), the
request-size limit and the error format.

Why ``/invoke`` is our own endpoint (same path, method and request model as ZenML's, which it
replaces): ZenML's answers HTTP 200 with ``success: false`` and a generic message when a step
fails, persists every request's parameters in its database and echoes them in the response. Here
the images are checked and decoded before any pipeline run exists: bad input gets a 4xx naming
each bad image and its rule, and creates no run; good input runs the pipeline with each image's
SHA-256 as its parameter (the decoded batch is handed to the step in memory), so the store keeps
which images were classified, never the images.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint's request model from
its annotation at run time.
"""

import logging
import time
from typing import Any

from bloodcell import MODEL_NAME
from bloodcell.serving.model import (
    Limits,
    RequestError,
    ServingModel,
    check_explain,
    decode_request,
    handed_over,
    problem,
    reference,
)

logger = logging.getLogger("bloodcell.serve")

_SERVED: ServingModel | None = None


def served() -> ServingModel:
    if _SERVED is None:
        raise RuntimeError("no model loaded: the deployment's start-up hook has not run")
    return _SERVED


OPTIONS: dict[str, Any] = {
    "version": "production",
    "model_name": MODEL_NAME,
    "model_path": None,
    "max_images": Limits.max_images,
    "max_image_bytes": Limits.max_image_bytes,
    "max_pixels": Limits.max_pixels,
    "max_body_bytes": Limits.max_body_bytes,
    "cache_python_packages": True,
    "sqlite_wal": True,
}
"""The start-up hook's options and their defaults. ``bloodcell serve`` passes each as a hook
argument; one left out (``None``) is read from ``BLOODCELL_SERVE_<OPTION>`` (e.g. set by a
deployment config's ``environment:``, which ZenML applies while the hook runs), else the default."""


def serve_options(**given: Any) -> dict[str, Any]:
    import os

    options = {}
    for name, default in OPTIONS.items():
        value = given.get(name)
        env = os.environ.get(f"BLOODCELL_SERVE_{name.upper()}")
        if value is None and env not in (None, ""):
            if isinstance(default, bool):
                value = env.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                value = int(env)
            else:
                value = env
        options[name] = default if value is None else value
    return options


def load_served_model(
    version: str | None = None,
    model_name: str | None = None,
    model_path: str | None = None,
    max_images: int | None = None,
    max_image_bytes: int | None = None,
    max_pixels: int | None = None,
    max_body_bytes: int | None = None,
    cache_python_packages: bool | None = None,
    sqlite_wal: bool | None = None,
) -> ServingModel:
    """The pipeline's ``on_init`` hook: runs once when the service starts (and once per run in a
    plain pipeline run). Loads ``model_path`` (a ``.keras`` file) if given, else version
    ``version`` of ``model_name`` from the Model Control Plane; its return value is the steps'
    ``pipeline_state``. Options left out: see :data:`OPTIONS`. ``cache_python_packages`` and
    ``sqlite_wal``: see :func:`cache_package_list` and :func:`use_sqlite_wal`."""
    global _SERVED
    started = time.perf_counter()
    o = serve_options(
        version=version,
        model_name=model_name,
        model_path=model_path,
        max_images=max_images,
        max_image_bytes=max_image_bytes,
        max_pixels=max_pixels,
        max_body_bytes=max_body_bytes,
        cache_python_packages=cache_python_packages,
        sqlite_wal=sqlite_wal,
    )
    version, model_name, model_path = o["version"], o["model_name"], o["model_path"]
    limits = Limits(o["max_images"], o["max_image_bytes"], o["max_pixels"], o["max_body_bytes"])
    if model_path:
        from pathlib import Path

        from bloodcell.model.predict import load_model

        model = load_model(model_path)
        name, number, stage = Path(model_path).name, None, None  # a file: no version
    else:
        from bloodcell.mlops.registry import load_version_model

        mv, model = load_version_model(version, model_name)
        name, number, stage = model_name, str(mv.number), (str(mv.stage) if mv.stage else None)
    _SERVED = ServingModel.load(model, name, number, stage, limits)
    cached = o["cache_python_packages"] and cache_package_list()
    journal = use_sqlite_wal() if o["sqlite_wal"] else None
    logger.warning(
        "bloodcell: serving %s, version %s (%s), %d classes at %dx%d, loaded in %.1f s; %s; "
        "package list %s; "
        "store journal %s",
        name,
        number,
        stage or "no stage",
        len(_SERVED.classes),
        _SERVED.image_size,
        _SERVED.image_size,
        time.perf_counter() - started,
        limits,
        "cached" if cached else "read on every request",
        journal or "unchanged",
    )
    return _SERVED


def use_sqlite_wal() -> str | None:
    """Put ZenML's local SQLite store in write-ahead-log mode; returns the journal mode, or None
    when the store is not a local SQLite file (a ZenML server, MySQL).

    Each request's pipeline run makes about 15 commits (snapshot, run, step run, statuses). In
    SQLite's default rollback-journal mode each commit waits for several fsyncs (9 ms a commit on
    this machine's disk, most of a request); in WAL mode, with the same durability
    (``synchronous=FULL``), one (0.4 ms). WAL is a property of the database file: it stays on for
    every process that uses the store (it adds ``zenml.db-wal`` and ``-shm`` beside it; undo with
    ``sqlite3 zenml.db 'PRAGMA journal_mode=DELETE'``). It needs a local disk, not a network share.
    """
    from zenml.client import Client

    store = Client().zen_store
    config = getattr(store, "config", None)
    if str(getattr(config, "driver", "")) != "sqlite" or not hasattr(store, "engine"):
        return None
    try:
        with store.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode=WAL").scalar())
    except Exception as exc:  # e.g. another process is writing just now: serve anyway, slower
        logger.warning(
            "bloodcell: could not switch the ZenML store to WAL mode (%s); "
            "its journal mode is unchanged",
            exc,
        )
        return None


class PackageListPatchError(RuntimeError):
    """ZenML no longer looks as :func:`cache_package_list` expects (an upgrade changed it)."""


OPT_OUT = (
    "serve without the cache: cache_python_packages=False, or "
    "BLOODCELL_SERVE_CACHE_PYTHON_PACKAGES=false in the deployment's environment"
)


def package_list_target() -> Any:
    """The ZenML internal :func:`cache_package_list` replaces, checked against what the code
    expects of ZenML 0.98: ``zenml.environment.Environment.get_python_packages``, a static method
    taking no arguments, called by ``zenml.environment.get_run_environment_dict`` (which every
    run's bookkeeping calls). Returns it; raises :class:`PackageListPatchError`, saying what
    changed, if any of that no longer holds: a ZenML upgrade must not silently undo (or break) the
    replacement."""
    import inspect

    try:
        from zenml import environment
    except ImportError as exc:
        raise PackageListPatchError(
            f"zenml.environment cannot be imported ({exc}); {OPT_OUT}"
        ) from exc
    where = "zenml.environment.Environment.get_python_packages"
    cls = getattr(environment, "Environment", None)
    raw = vars(cls).get("get_python_packages") if isinstance(cls, type) else None
    if raw is None:
        raise PackageListPatchError(f"{where} is gone in ZenML {_zenml_version()}; {OPT_OUT}")
    if not isinstance(raw, staticmethod):
        raise PackageListPatchError(
            f"{where} is no longer a static method in ZenML {_zenml_version()} "
            f"(it is {type(raw).__name__}); {OPT_OUT}"
        )
    func = raw.__func__
    params = list(inspect.signature(func).parameters)
    if params:
        raise PackageListPatchError(
            f"{where} takes arguments {params} in ZenML {_zenml_version()}, not none; {OPT_OUT}"
        )
    caller = getattr(environment, "get_run_environment_dict", None)
    names = getattr(getattr(caller, "__code__", None), "co_names", ())
    if "get_python_packages" not in names:
        raise PackageListPatchError(
            f"zenml.environment.get_run_environment_dict no longer calls {where} in ZenML "
            f"{_zenml_version()}, so caching it would not spare the runs anything; {OPT_OUT}"
        )
    return func


def _zenml_version() -> str:
    try:
        import zenml

        return str(zenml.__version__)
    except Exception:  # pragma: no cover - only for the message
        return "(unknown version)"


def cache_package_list() -> bool:
    """Read the installed-package list once instead of on every request. Returns whether it did.

    ZenML 0.98 records ``pip freeze`` with every pipeline run it creates
    (``step_launcher._create_or_reuse_run`` -> ``get_run_environment_dict`` ->
    ``Environment.get_python_packages``, a subprocess), so with a run per request it is most of a
    request's time (about 240 ms of 300 in a trivial deployment on 2 cores; ``uv`` on PATH makes it
    about 30 ms). ZenML 0.98 has no setting or environment variable for it (its deployment server
    and ``zenml.constants`` have none), so this replaces that internal with the list read once at
    start-up: runs still record the packages, as of the service's start.

    Pinned, not guarded: if ZenML's internal is gone or has changed shape
    (:func:`package_list_target`), this raises :class:`PackageListPatchError` and the service does
    not start, saying how to serve without the cache. Only a failure to list the packages now (no
    pip) leaves ZenML as it is, with a warning, as ZenML itself does; it then returns False.
    """
    from zenml.environment import Environment

    original = package_list_target()
    if getattr(original, "bloodcell_cached", False):
        return True
    try:
        packages = list(original())
    except Exception as exc:  # ZenML itself only warns when it cannot list packages
        logger.warning("bloodcell: could not list installed packages (%s); not cached", exc)
        return False

    def get_python_packages() -> list[str]:
        return list(packages)

    get_python_packages.bloodcell_cached = True  # type: ignore[attr-defined]
    Environment.get_python_packages = staticmethod(get_python_packages)
    return True


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content=body, headers=headers)


def build_invoke(app_runner: Any):
    """``POST /invoke``: validate and decode, then run the pipeline once for the whole request."""
    service = app_runner.service
    InvokeRequest, InvokeResponse = service.get_pipeline_invoke_models()

    def invoke(
        request: InvokeRequest,
    ) -> InvokeResponse:  # sync: FastAPI runs it in its thread pool
        model = served()
        params = request.parameters
        started = time.perf_counter()
        try:
            batch, digests = decode_request(params.images, model.image_size, model.limits)
            check_explain(params.explain, len(batch))
        except RequestError as exc:
            return _json(exc.status, exc.body())
        decoded = time.perf_counter()
        refs = [reference(d) for d in digests]
        params.images = refs
        if "skip_artifact_materialization" not in request.model_fields_set:
            request.skip_artifact_materialization = (
                True  # outputs in memory only, unless the caller asks
            )
        with handed_over(refs, batch):
            response = service.execute_pipeline(request)
        ran = time.perf_counter()
        body = response.model_dump(mode="json")
        if not response.success:
            logger.error("bloodcell: pipeline run failed: %s", body.get("error"))
            body["details"] = [
                problem(
                    None,
                    "the service classifies valid images",
                    "the pipeline run failed; `zenml deployment logs <name>` has the traceback",
                )
            ]
            return _json(500, body)
        # where the time went: decoding, the whole pipeline run, the model inside it
        model_ms = ((body.get("outputs") or {}).get("classification") or {}).get("model_ms", 0.0)
        timing = (
            f"decode;dur={1000 * (decoded - started):.1f}, "
            f"run;dur={1000 * (ran - decoded):.1f}, model;dur={model_ms:.1f}"
        )
        return _json(200, body, {"Server-Timing": timing})

    return invoke


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over the limit (``max_body_bytes`` of the loaded
    model's limits), whether announced by Content-Length or sent chunked. ZenML's server has
    none."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = _SERVED.limits.max_body_bytes if _SERVED else Limits.max_body_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > limit:
                return await self._reject(send, limit, f"the body has {int(length)} bytes")
            return await self.app(
                scope, receive, send
            )  # the server holds the body to its Content-Length
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                return await self._reject(send, limit, f"the body has more than {limit} bytes")
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _reject(send, limit: int, message: str) -> None:
        import json

        error = RequestError(
            "request too large",
            [problem(None, f"a request body has at most {limit} bytes", message)],
            413,
        )
        body = json.dumps(error.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install_error_format(app_runner: Any) -> None:
    """App extension: a body that is not an invoke request (bad JSON, wrong types, unknown keys)
    gets 422 in this service's error format, naming the image's index where there is one."""
    from fastapi.exceptions import RequestValidationError

    from bloodcell.serving.model import REQUEST_SHAPE

    async def handler(request, exc: RequestValidationError):
        details = []
        for err in exc.errors():
            loc = [str(part) for part in err.get("loc", ())]
            index = (
                int(loc[3])
                if loc[1:3] == ["parameters", "images"] and len(loc) > 3 and loc[3].isdigit()
                else None
            )
            invalid_json = err.get("type") == "json_invalid"
            where = "body" if invalid_json or len(loc) < 2 else ".".join(loc[1:])
            what = (
                f"not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
                if invalid_json
                else err.get("msg", "invalid")
            )
            details.append(problem(index, REQUEST_SHAPE, f"{where}: {what}"))
        return _json(422, RequestError("not an invoke request", details, 422).body())

    app_runner.asgi_app.add_exception_handler(RequestValidationError, handler)
