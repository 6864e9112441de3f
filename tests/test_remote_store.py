"""The quickstart on an S3 artifact store: a server this test starts (moto's server mode, an
S3-compatible endpoint on 127.0.0.1), a stack with ZenML's S3 artifact store pointed at it, and
`zenml pipeline run` as users run it. Every artifact, visualization and training backup goes
through ``fileio``, so the same code serves ``gs://`` and ``az://`` stores."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sandbox import ZENML, make_sandbox, zenml

pytestmark = pytest.mark.pipeline

BUCKET = "bloodcell-artifacts"
MODEL = "bloodcell-remote"  # its own registered model: other tests' runs share this ZenML store
EPOCHS = 8  # the killed run's fit
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3():
    """An S3 server on a free local port, with an empty bucket; (endpoint URL, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # for the artifacts this process loads back
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket=BUCKET)
    yield url, client
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3) -> Path:
    """A sandbox whose active stack is the default orchestrator and an S3 artifact store."""
    url, _ = s3
    proj = make_sandbox(tmp_path_factory.mktemp("proj"))
    zenml(
        proj,
        "artifact-store",
        "register",
        "s3_test_store",
        "--flavor",
        "s3",
        f"--path=s3://{BUCKET}/zenml",
        f"--client_kwargs={json.dumps({'endpoint_url': url})}",
        env=CREDENTIALS,
    )
    zenml(
        proj,
        "stack",
        "register",
        "s3_test_stack",
        "-o",
        "default",
        "-a",
        "s3_test_store",
        "--set",
        env=CREDENTIALS,
    )
    for name, epochs in (("remote.yaml", None), ("remote_killed.yaml", EPOCHS)):
        cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
        cfg["model"] = {"name": MODEL}
        if epochs:
            cfg["steps"]["train"]["parameters"]["training"].update(
                epochs=epochs, swa_epochs=2, early_stopping_patience=epochs
            )
            for step, floors in (
                ("train", ["min_val_accuracy"]),
                ("fine_tune", ["min_val_accuracy"]),
                ("evaluate", ["min_plain_accuracy", "min_noisy_accuracy"]),
            ):
                cfg["steps"][step]["parameters"].update(
                    dict.fromkeys(floors, 0.0)
                )  # a short fit: no gate to flake
        (proj / "configs" / name).write_text(yaml.safe_dump(cfg))
    return proj


def _keys(client, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _run(proj: Path, config: str):
    from zenml.client import Client

    res = zenml(
        proj,
        "pipeline",
        "run",
        "pipelines.training.training_pipeline",
        "-c",
        config,
        env=CREDENTIALS,
    )
    return Client().get_pipeline("training_pipeline").last_run, res.stdout + res.stderr


def test_the_quickstart_runs_end_to_end_on_s3_and_its_rerun_is_cached(project, s3):
    from bloodcell.data.dataset import Dataset

    _, client = s3
    run, _ = _run(project, "configs/remote.yaml")
    assert str(run.status) == "completed"
    keys = _keys(client)
    for step in ("ingest", "split", "train", "fine_tune", "evaluate"):
        assert any(k.startswith(f"zenml/{step}/") for k in keys), (
            f"no {step} artifact in the bucket"
        )
    assert any(k.endswith("/model.keras") for k in keys) and any(
        k.endswith("/images-00000.npy") for k in keys
    )
    assert not [k for k in keys if "/checkpoints/" in k]  # finished fits leave no backup behind

    dataset_art = run.steps["ingest"].outputs["dataset"][0]
    assert dataset_art.uri.startswith(f"s3://{BUCKET}/zenml/")
    ds = dataset_art.load()  # read back from the bucket; the materializer checks the fingerprint
    assert (
        isinstance(ds, Dataset)
        and len(ds) == 400
        and dataset_art.run_metadata["fingerprint"] == ds.fingerprint
    )
    assert run.steps["evaluate"].outputs["evaluation"][0].load().sets["plain"].accuracy >= 0.3
    assert len(dataset_art.visualizations) == 2
    assert dataset_art.visualizations[0].uri.startswith("s3://")

    rerun, _ = _run(project, "configs/remote.yaml")
    status = {name: str(step.status) for name, step in rerun.steps.items()}
    assert all(
        status[s] == "cached"
        for s in ("filter_outliers", "split", "rebalance", "train", "fine_tune", "evaluate")
    ), status


def test_a_fit_killed_on_one_machine_resumes_on_another_from_the_bucket(
    project, s3, zen_home, tmp_path
):
    """The training backup is mirrored to the bucket after each epoch. The run is killed and its
    machine's local backups are wiped (a pod that is gone): the next run takes the fit up from the
    bucket and trains only the epochs that were left."""
    from zenml.client import Client

    _, client = s3
    log = tmp_path / "killed.log"
    env = {
        **os.environ,
        **CREDENTIALS,
        "PYTHONPATH": str(project),
        "ZENML_LOGGING_COLORS_DISABLED": "true",
    }
    run = subprocess.Popen(
        [
            ZENML,
            "pipeline",
            "run",
            "pipelines.training.training_pipeline",
            "-c",
            "configs/remote_killed.yaml",
        ],
        cwd=project,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        while (done := _mirrored_epoch(client)) < 2:
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no backup reached the bucket"
            time.sleep(0.5)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
    done = _mirrored_epoch(client)
    assert 2 <= done < EPOCHS
    shutil.rmtree(Path(zen_home) / "checkpoints")  # the local copy went with the machine

    _, out = _run(project, "configs/remote_killed.yaml")
    assert "resuming from" in out and f"s3://{BUCKET}/zenml/checkpoints/train/" in out
    step = Client().get_pipeline("training_pipeline").last_run.steps["train"]
    assert str(step.status) == "completed"
    assert (
        step.run_metadata["epochs"] == EPOCHS - done
    )  # only the epochs the killed run had not finished
    assert not [k for k in _keys(client) if "/checkpoints/" in k]


def _mirrored_epoch(client) -> int:
    """The last finished epoch that a training backup in the bucket holds (0 if none yet)."""
    metas = [
        k for k in _keys(client, "zenml/checkpoints/train/") if k.endswith("training_metadata.json")
    ]
    epochs = [0]
    for key in metas:
        try:
            epochs.append(
                json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())["epoch"]
            )
        except (client.exceptions.NoSuchKey, ValueError):  # being replaced or removed: look again
            continue
    return max(epochs)
