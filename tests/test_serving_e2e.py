"""The serving deployment end to end, in a throw-away ZenML repo: train the quickstart (shortened),
`bloodcell serve` it (ZenML's local deployer, a real process on a free port), call it over HTTP with
real sample images and compare with `bloodcell predict`, send every kind of bad input (each
followed by a good request), drive its page in chromium, and `bloodcell serve --stop` it: the
process is gone afterwards. One deployment serves every test of this module."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from PIL import Image

from sandbox import make_sandbox, zenml
from serving_page import browser_missing, classify_on_page

pytestmark = [pytest.mark.pipeline, pytest.mark.server]

MODEL = "bloodcell-serve-e2e"
NAME = "bloodcell-e2e"
BLOODCELL = str(Path(sys.executable).parent / "bloodcell")
LIMITS = {
    "max-images": 8,
    "max-image-bytes": 150_000,
    "max-pixels": 1_000_000,
    "max-body-bytes": 1_500_000,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bloodcell(proj: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(proj), "ZENML_LOGGING_COLORS_DISABLED": "true"}
    return subprocess.run(
        [BLOODCELL, *args], cwd=proj, env=env, capture_output=True, text=True, timeout=900
    )


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = make_sandbox(tmp_path_factory.mktemp("serve") / "proj")
    cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
    cfg["model"] = {"name": MODEL}
    cfg["steps"]["train"]["parameters"]["training"].update(
        epochs=2, swa_epochs=1, recalibrate_samples_per_epoch=64
    )
    for step, key in (
        ("train", "min_val_accuracy"),
        ("fine_tune", "min_val_accuracy"),
        ("evaluate", "min_plain_accuracy"),
        ("evaluate", "min_noisy_accuracy"),
    ):
        cfg["steps"][step]["parameters"][key] = 0.0
    cfg["steps"]["evaluate"]["parameters"]["corruption_samples"] = 8
    (proj / "configs" / "serve_e2e.yaml").write_text(yaml.safe_dump(cfg))
    zenml(
        proj,
        "pipeline",
        "run",
        "pipelines.training.training_pipeline",
        "-c",
        "configs/serve_e2e.yaml",
    )
    return proj


@pytest.fixture(scope="module")
def service(project):
    """`bloodcell serve` the production version; always deprovisioned at the end."""
    from zenml.client import Client

    args = ["serve", "--model-name", MODEL, "--name", NAME, "--port", str(_free_port())]
    for flag, value in LIMITS.items():
        args += [f"--{flag}", str(value)]
    res = _bloodcell(project, *args)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        *_, url_line, key_line = res.stdout.strip().splitlines()
        assert url_line.startswith("url: http://127.0.0.1:") and key_line.startswith("key: ")
        deployment = Client().get_deployment(NAME)
        yield {
            "url": url_line[5:],
            "key": key_line[5:],
            "pid": deployment.deployment_metadata["pid"],
            "out": res.stdout,
        }
    finally:
        with contextlib.suppress(Exception):
            _bloodcell(project, "serve", "--stop", "--name", NAME)


def _post(
    service, body=None, data=None, key: str | None = "valid", headers=None
) -> requests.Response:
    h = {"Authorization": f"Bearer {service['key'] if key == 'valid' else key}"} if key else {}
    return requests.post(
        f"{service['url']}/invoke",
        json=body,
        data=data,
        headers={**h, **(headers or {})},
        timeout=120,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _samples(n_per_class: int = 2) -> list[Path]:
    from conftest import SAMPLE

    return [
        f
        for c in sorted(p for p in SAMPLE.iterdir() if p.is_dir())
        for f in sorted(c.iterdir())[:n_per_class]
    ]


def _good(service) -> None:
    r = _post(service, {"parameters": {"images": [_b64(_samples(1)[0].read_bytes())]}})
    assert r.status_code == 200 and r.json()["success"], r.text


def test_serve_prints_the_url_and_key_and_listens_on_loopback_only(service):
    import psutil

    assert "serves bloodcell-serve-e2e version 1 (production" in service["out"]
    port = int(service["url"].rsplit(":", 1)[1])
    listening = [
        c
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == "LISTEN"
    ]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    assert requests.get(f"{service['url']}/health", timeout=10).status_code == 200
    assert _post(service, {"parameters": {"images": []}}, key=None).status_code == 401
    assert _post(service, {"parameters": {"images": []}}, key="wrong").status_code == 401


def test_answers_equal_bloodcell_predict(service, tmp_path):
    """Sample cells as shipped plus converted copies (RGBA PNG, BMP, 16-bit TIFF, a larger JPEG):
    the service's classes and probabilities are `bloodcell predict`'s CSV, to float tolerance."""
    from zenml.client import Client

    from bloodcell.cli import main as cli

    folder = tmp_path / "cells"
    folder.mkdir()
    for f in _samples(1):
        shutil.copy(f, folder / f.name)
    cell = Image.open(_samples(1)[5])
    cell.convert("RGBA").save(folder / "z_rgba.png")
    cell.save(folder / "z_cell.bmp")
    Image.fromarray(np.asarray(cell.convert("L"), dtype=np.uint16) * 257).save(
        folder / "z_gray16.tif"
    )
    cell.resize((180, 140)).save(folder / "z_wide.jpg")
    csv = tmp_path / "p.csv"
    assert (
        cli(["predict", "production", str(folder), "--model-name", MODEL, "--output", str(csv)])
        == 0
    )
    table = pd.read_csv(csv).set_index("id")
    files = sorted(folder.iterdir())
    rows = []
    for start in range(0, len(files), LIMITS["max-images"]):
        r = _post(
            service,
            {"parameters": {"images": [_b64(f.read_bytes()) for f in files[start : start + 8]]}},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        rows += body["outputs"]["classification"]["predictions"]
        assert "Server-Timing" in r.headers
    model = body["outputs"]["classification"]["model"]
    assert model["name"] == MODEL and model["version"] == "1" and model["stage"] == "production"
    assert model["classes"] == [c[2:] for c in table.columns if c.startswith("p_")]
    assert len(rows) == len(files) == len(table)
    for f, row in zip(files, rows):
        expected = table.loc[f.name]
        assert row["class"] == expected.predicted_class, f.name
        assert (row["status"], row["reason"]) == (expected.status, expected.reason), f.name
        assert row["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
        assert row["probabilities"] == pytest.approx(
            {c: expected[f"p_{c}"] for c in model["classes"]}, abs=1e-5
        )
        assert [t["class"] for t in row["top3"]][0] == row["class"] and len(row["top3"]) == 3
        assert row["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    # the run keeps each image's SHA-256, never the image; the response does not echo the images
    assert body["metadata"]["parameters_used"]["images"] == [
        f"sha256:{r['sha256']}" for r in rows[8:]
    ]
    run = Client().get_pipeline_run(body["metadata"]["run_id"])
    assert str(run.status) == "completed"
    stored = json.dumps(run.config.model_dump(mode="json")) + json.dumps(
        run.steps["classify"].config.model_dump(mode="json")
    )
    assert (
        f"sha256:{rows[-1]['sha256']}" in stored and _b64(files[-1].read_bytes())[:64] not in stored
    )


def _bad_requests(service) -> list[tuple[str, dict, int, object, str]]:
    """(case, body or raw data, status, index, rule): each is followed by a good request."""
    good = _b64(_samples(1)[0].read_bytes())
    noise = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (250, 250, 3), dtype=np.uint8)
    )
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    big = _b64(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (1100, 1000), (180, 120, 140)).save(buf, "PNG")
    wide = _b64(buf.getvalue())
    truncated = _b64(_samples(1)[1].read_bytes()[:500])
    return [
        (
            "not an image",
            {"images": [good, _b64(b"GIF89a? no: plain text")]},
            400,
            1,
            "an image is a PNG/JPEG/BMP/TIFF file",
        ),
        (
            "truncated",
            {"images": [good, good, truncated]},
            400,
            2,
            "every image decodes completely",
        ),
        ("empty image", {"images": [""]}, 400, 0, "an image has at least one byte"),
        (
            "not base64",
            {"images": ["%%%"]},
            400,
            0,
            "an image is base64 (standard alphabet, with padding)",
        ),
        ("no images", {"images": []}, 400, None, "a request has at least one image"),
        ("too many images", {"images": [good] * 9}, 400, None, "a request has at most 8 images"),
        ("too many bytes", {"images": [good, big]}, 400, 1, "an image has at most 150000 bytes"),
        ("too many pixels", {"images": [wide]}, 400, 0, "an image has at most 1000000 pixels"),
        (
            "bad explain",
            {"images": [good], "explain": 1},
            400,
            None,
            "explain is the index of one of the request's 1 image(s)",
        ),
        ("not a string", {"images": [good, 7]}, 422, 1, "the body is"),
        ("unknown key", {"images": [good], "colour": "red"}, 422, None, "the body is"),
        ("no parameters", None, 422, None, "the body is"),
        ("not JSON", b'{"parameters": {"images": [', 422, None, "the body is"),
        ("body too large", b"x" * 1_600_000, 413, None, "a request body has at most 1500000 bytes"),
    ]


def test_bad_input_gets_a_4xx_naming_the_image_and_rule_and_the_service_goes_on(service):
    from zenml.client import Client

    def runs() -> int:
        return (
            Client()
            .list_pipeline_runs(pipeline_id=Client().get_pipeline("serving_pipeline").id, size=1)
            .total
        )

    before = runs()
    for case, params, status, index, rule in _bad_requests(service):
        if isinstance(params, bytes):
            r = _post(service, data=params, headers={"Content-Type": "application/json"})
        else:
            r = _post(service, {"parameters": params} if params is not None else {"images": []})
        assert r.status_code == status, (case, r.status_code, r.text[:300])
        body = r.json()
        assert body["success"] is False and body["error"], case
        assert any(d["index"] == index and d["rule"].startswith(rule) for d in body["details"]), (
            case,
            body,
        )
        _good(service)
    # chunked upload over the limit (no Content-Length)
    r = requests.post(
        f"{service['url']}/invoke",
        data=(b"x" * 100_000 for _ in range(20)),
        headers={"Authorization": f"Bearer {service['key']}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert (
        r.status_code == 413
        and r.json()["details"][0]["rule"] == "a request body has at most 1500000 bytes"
    )
    _good(service)
    assert (
        runs() - before == len(_bad_requests(service)) + 1
    )  # bad requests make no pipeline run: only the good ones did


def test_where_the_model_looked(service):
    image = _b64(_samples(1)[6].read_bytes())
    r = _post(service, {"parameters": {"images": [image, image], "explain": 1}})
    assert r.status_code == 200, r.text
    rows = r.json()["outputs"]["classification"]["predictions"]
    occ = rows[1]["occlusion"]
    assert "occlusion" not in rows[0] and np.array(occ["map"]).shape == (8, 8)
    assert (
        occ["probability"] == pytest.approx(rows[1]["confidence"], abs=1e-6) and occ["patch"] == 24
    )


@pytest.mark.browser
def test_the_page_classifies_two_images_in_a_real_browser(service, tmp_path):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    blank = tmp_path / "blank.png"  # not a blood cell: the page says so, with the reason
    Image.new("RGB", (96, 96), (20, 20, 20)).save(blank)
    files = [_samples(1)[6], _samples(1)[7], blank]  # a neutrophil, a platelet, a blank field
    expected = _post(
        service, {"parameters": {"images": [_b64(f.read_bytes()) for f in files]}}
    ).json()
    predictions = expected["outputs"]["classification"]["predictions"]
    classes = [p["class"] for p in predictions]
    shot = tmp_path / "serving.png"
    page = classify_on_page(service["url"], service["key"], files, screenshot=shot, explain=0)
    assert page["status"].startswith("HTTP 200"), page
    assert page["classes"] == classes and page["bars"] == [8, 8, 8]
    assert (
        page["statuses"] == [p["status"] for p in predictions]
        and page["statuses"][2] == "not_a_cell"
    )
    badge = {"accept": "accepted", "review": "needs review", "not_a_cell": "not a blood cell"}
    assert [b.lower() for b in page["badges"]] == [badge[s] for s in page["statuses"]]
    assert page["reasons"] == [p["reason"] for p in predictions] and page["reasons"][2].startswith(
        "a blank image"
    )
    assert f"{MODEL} version 1 (production)" in page["model"]
    assert "lowers P(" in page["explanation"] and shot.stat().st_size > 10_000
    assert page["errors"] == [], page["errors"]
    # a bad file shows its rule on its card
    bad = tmp_path / "broken.png"
    bad.write_bytes(files[0].read_bytes()[:300])
    page = classify_on_page(service["url"], service["key"], [files[0], bad], explain=None)
    assert (
        page["status"].startswith("HTTP 400")
        and page["rules"]
        and "every image decodes completely" in page["rules"][0]
    )


def test_serve_sets_up_a_deployer_when_the_stack_has_none(project, monkeypatch):
    from zenml.client import Client
    from zenml.constants import ENV_ZENML_ACTIVE_STACK_ID
    from zenml.enums import StackComponentType

    from bloodcell.serving.deploy import DEPLOYER, deployer_stack

    client = Client()
    bare = client.create_stack(
        "no-deployer",
        components={
            StackComponentType.ORCHESTRATOR: "default",
            StackComponentType.ARTIFACT_STORE: "default",
        },
    )
    monkeypatch.setenv(ENV_ZENML_ACTIVE_STACK_ID, str(bare.id))
    name, registered = deployer_stack()
    assert name == "no-deployer-serve" and len(registered) == 2 and DEPLOYER in registered[0]
    stack = client.get_stack(name)
    assert stack.components[StackComponentType.DEPLOYER][0].flavor_name == "local"
    assert deployer_stack() == (name, [])  # idempotent
    assert (
        client.get_stack(bare.id).components.get(StackComponentType.DEPLOYER) is None
    )  # the stack itself unchanged


def test_serve_refuses_a_version_without_a_model_and_a_busy_port(project, service):
    res = _bloodcell(project, "serve", "--model-name", MODEL, "--name", "never", "--version", "99")
    assert res.returncode == 2 and "has no version '99'" in res.stderr
    port = service["url"].rsplit(":", 1)[
        1
    ]  # a port asked for is never silently swapped for another
    res = _bloodcell(project, "serve", "--model-name", MODEL, "--name", "second", "--port", port)
    assert (
        res.returncode == 2 and "deployment 'second' failed" in res.stderr and port in res.stderr
    ), res.stderr


def test_stop_deprovisions_and_the_process_ends(project, service):
    pid = service["pid"]
    assert _alive(pid)
    res = _bloodcell(project, "serve", "--stop", "--name", NAME)
    assert res.returncode == 0 and f"process {pid} ended" in res.stdout, res.stdout + res.stderr
    assert not _alive(pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{service['url']}/health", timeout=5)
