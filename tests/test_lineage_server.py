"""`bloodcell lineage` against a real local ZenML server: the test starts one (`zenml login --local`
on a free loopback port, with its own ZenML config), runs the quickstart against it, reads the
lineage of the model version it made, and stops the server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from sandbox import ZENML, make_sandbox, tiny_config

pytestmark = [pytest.mark.pipeline, pytest.mark.server]

GUARDED = [
    "ingest",
    "filter_outliers",
    "split",
    "rebalance",
    "train",
    "fine_tune",
    "ingest_external",
    "evaluate",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    proj = make_sandbox(tmp_path_factory.mktemp("lineage"))
    cfg = tiny_config(proj, corruption_samples=None)
    (proj / "configs" / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "ZENML_CONFIG_PATH": str(tmp_path_factory.mktemp("zenml-server-config")),
        "PYTHONPATH": str(proj),
        "ZENML_LOGGING_COLORS_DISABLED": "true",
        "ZENML_ANALYTICS_OPT_IN": "false",
    }

    def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=900)
        if check and res.returncode:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                f"{res.stderr[-5000:]}"
            )
        return res

    port = _free_port()
    run(ZENML, "login", "--local", "--port", str(port))
    try:
        # the first client call on the new store may first say it reset the repo's project and stack
        url = run(
            sys.executable, "-c", "from zenml.client import Client; print(Client().zen_store.url)"
        ).stdout.split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith(str(port)), url
        run(
            ZENML,
            "pipeline",
            "run",
            "pipelines.training.training_pipeline",
            "-c",
            "configs/tiny.yaml",
        )
        yield run
    finally:
        run(ZENML, "logout", "--local", check=False)


def test_lineage_json_names_run_steps_artifacts_and_checks(served):
    res = served(sys.executable, "-m", "bloodcell.cli", "lineage", "--version", "latest", "--json")
    info = json.loads(res.stdout)
    assert info["model"]["name"] == "bloodcell-classifier" and info["model"]["number"] == 1
    assert (
        info["model"]["stage"] == "production"
    )  # the first version passed the gate and was promoted
    assert (
        "plain_accuracy" in info["model"]["metadata"]
        and "train_fingerprint" in info["model"]["metadata"]
    )
    (run,) = info["runs"]
    assert run["pipeline"] == "training_pipeline" and run["status"] == "completed"
    assert "sources sha256" in run["code_version"]
    assert run["config"]["model"] == "bloodcell-classifier"
    assert run["config"]["steps"]["ingest"]["source"] == "data/sample"
    steps = {s["name"]: s for s in run["steps"]}
    assert sorted(steps) == sorted([*GUARDED, "promote"])
    for s in steps.values():
        assert s["status"] == "completed" and s["cached"] is False and s["duration_s"] > 0
        assert s["ran_on"] == "orchestrator"
    (dataset,) = [a for a in steps["ingest"]["outputs"] if a["name"] == "dataset"]
    assert len(dataset["fingerprint"]) == 64 and dataset["source"].endswith("data/sample")
    (consumed,) = [a for a in steps["filter_outliers"]["inputs"] if a["name"] == "dataset"]
    assert consumed["fingerprint"] == dataset["fingerprint"]
    for name in GUARDED:
        (exp,) = [
            a["expectations"] for a in steps[name]["outputs"] if a["name"] == f"{name}_expectations"
        ]
        assert exp["success"] is True and exp["count"] == len(exp["results"]) >= 1, name
        assert all(r["success"] for r in exp["results"])
    heights = [
        r
        for r in [a for a in steps["ingest"]["outputs"] if a["name"] == "ingest_expectations"][0][
            "expectations"
        ]["results"]
        if r["column"] == "height"
    ]
    assert heights[0]["threshold"] == {"min_value": 96, "max_value": 96}


def test_lineage_text_for_the_production_version(served):
    text = served(sys.executable, "-m", "bloodcell.cli", "lineage").stdout
    assert text.startswith("model bloodcell-classifier version 1")
    assert "stage production" in text
    assert "step train: completed" in text and "ran on orchestrator" in text
    assert "expectations ingest_expectations" in text and "passed" in text
    assert "ok   expect_column_values_to_be_between on samples.height: observed" in text
    missing = served(
        sys.executable, "-m", "bloodcell.cli", "lineage", "--version", "7", check=False
    )
    assert missing.returncode == 2 and "has no version '7'" in missing.stderr
