"""Serving without a deployment: request rules and decoding (the same as `bloodcell predict`'s),
the answer rows, the occlusion map, the hand-over to the step, the body-size limit and the guarded
package-list cache. The deployment itself is tested in test_serving_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from bloodcell.data.images import IngestError, decode_image, load_image
from bloodcell.serving.model import (
    Limits,
    RequestError,
    ServingModel,
    answer_rows,
    check_explain,
    decode_request,
    handed_over,
    images_for,
    occlusion_map,
    reference,
)

from conftest import SAMPLE


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Real sample cells in several formats and modes: JPEG as shipped, RGBA PNG, BMP, 16-bit
    grayscale TIFF, and a larger non-square JPEG (cropped and resized)."""
    d = tmp_path_factory.mktemp("formats")
    cells = [
        sorted((SAMPLE / c).iterdir())[0]
        for c in ("neutrophil", "platelet", "eosinophil", "lymphocyte")
    ]
    out = [cells[0]]
    rgba = Image.open(cells[1]).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(d / "rgba.png")
    Image.open(cells[2]).save(d / "cell.bmp")
    gray16 = np.asarray(Image.open(cells[3]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(d / "gray16.tif")
    Image.open(cells[0]).resize((200, 150), Image.Resampling.BICUBIC).save(
        d / "wide.jpg", quality=92
    )
    return out + [d / "rgba.png", d / "cell.bmp", d / "gray16.tif", d / "wide.jpg"]


def test_bytes_decode_exactly_as_files_load(files):
    for path in files:
        for size in (96, 64):
            expected = load_image(path, size, Counter())
            got = decode_image(path.read_bytes(), size, Counter(), "x")
            assert got.dtype == np.uint8 and np.array_equal(got, expected), (path.name, size)
    batch, digests = decode_request([_b64(p.read_bytes()) for p in files], 96, Limits())
    assert batch.shape == (len(files), 96, 96, 3) and len(set(digests)) == len(files)
    assert np.array_equal(batch[1], load_image(files[1], 96, Counter()))


def test_every_bad_image_is_named_with_its_rule_and_nothing_is_decoded(files):
    good = _b64(files[0].read_bytes())
    big = _encoded(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)),
        "PNG",
    )
    huge = _encoded(Image.new("RGB", (1200, 1000), (200, 100, 100)), "PNG")
    gif = _encoded(Image.open(files[0]), "GIF")
    images = [
        good,
        "not*base64",
        _b64(b"hello, not an image"),
        _b64(files[0].read_bytes()[:400]),
        "",
        _b64(big),
        _b64(huge),
        _b64(gif),
        good,
    ]
    limits = Limits(max_images=10, max_image_bytes=100_000, max_pixels=1_000_000)
    with pytest.raises(RequestError) as err:
        decode_request(images, 96, limits)
    e = err.value
    assert e.status == 400 and e.error.startswith("7 of 9 image(s) break a rule")
    rules = {d["index"]: d["rule"] for d in e.details}
    assert rules == {
        1: "an image is base64 (standard alphabet, with padding)",
        2: "an image is a PNG/JPEG/BMP/TIFF file",
        3: "every image decodes completely",
        4: "an image has at least one byte",
        5: "an image has at most 100000 bytes",
        6: "an image has at most 1000000 pixels",
        # GIF is a format PIL reads, but not one a request may hold
        7: "an image is a PNG/JPEG/BMP/TIFF file",
    }
    assert all(d["message"].startswith(f"image {d['index']}: ") for d in e.details)
    assert json.loads(json.dumps(e.body()))["details"][0]["index"] == 1


def test_request_level_rules():
    with pytest.raises(RequestError, match="no images"):
        decode_request([], 96, Limits())
    with pytest.raises(RequestError) as err:
        decode_request(["x"] * 3, 96, Limits(max_images=2))
    assert err.value.details == [
        {
            "index": None,
            "rule": "a request has at most 2 images",
            "message": "the request has 3 images",
        }
    ]
    with pytest.raises(RequestError, match="explain"):
        check_explain(2, 2)
    check_explain(None, 2)
    check_explain(1, 2)
    with pytest.raises(ValueError, match="decompression-bomb"):
        Limits(max_pixels=Image.MAX_IMAGE_PIXELS + 1)
    with pytest.raises(ValueError, match="positive integer"):
        Limits(max_images=0)


def test_a_data_url_prefix_and_line_breaks_are_accepted(files):
    raw = files[0].read_bytes()
    wrapped = base64.encodebytes(raw).decode()  # 76-character lines, as `base64` writes them
    a, _ = decode_request(["data:image/jpeg;base64," + _b64(raw), wrapped], 96, Limits())
    assert np.array_equal(a[0], load_image(files[0], 96, Counter())) and np.array_equal(a[1], a[0])


def test_decode_image_refuses_large_images_from_the_header():
    data = _encoded(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(
        IngestError,
        match=r"3000x3000 = 9000000 pixels \(rule: an image has at most 1000000 pixels\)",
    ):
        decode_image(data, 96, Counter(), "image 0", max_pixels=1_000_000)


def test_answer_rows():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], dtype=np.float32)
    rows = answer_rows(
        probs,
        ["a", "b", "c"],
        ["d0", "d1"],
        ["accept", "review"],
        ["confidence 0.60", "confidence 0.50 below 0.55"],
    )
    assert [r["class"] for r in rows] == ["b", "a"] and rows[0]["confidence"] == pytest.approx(0.6)
    assert [r["status"] for r in rows] == ["accept", "review"] and rows[1][
        "reason"
    ] == "confidence 0.50 below 0.55"
    assert [t["class"] for t in rows[1]["top3"]] == ["a", "c", "b"]
    assert rows[0]["probabilities"] == pytest.approx({"a": 0.1, "b": 0.6, "c": 0.3})
    assert rows[1]["sha256"] == "d1" and json.dumps(rows)


def test_occlusion_shows_the_part_of_the_image_the_model_uses():
    """A 'model' whose class-0 probability is the brightness of the image's top-left quarter:
    covering that quarter lowers it; covering anywhere else does not."""

    def predict(batch):
        p = batch[:, :16, :16].mean(axis=(1, 2, 3)) / 255.0
        return np.stack([p, 1 - p], axis=1)

    image = np.zeros((64, 64, 3), np.uint8)
    image[:16, :16] = 255
    occ = occlusion_map(predict, image, 0)
    grid = np.array(occ["map"])
    assert (
        occ["patch"] == 16
        and occ["cell"] == 8
        and grid.shape == (8, 8)
        and occ["evaluations"] == 49
    )
    assert occ["probability"] == pytest.approx(1.0)
    assert (
        grid[:2, :2].min() > 0.2
        and np.abs(grid[4:, :]).max() == 0
        and np.abs(grid[:, 4:]).max() == 0
    )


def test_the_step_takes_the_handed_over_batch_or_decodes(files):
    limits = Limits()
    b64 = [_b64(p.read_bytes()) for p in files[:2]]
    batch, digests = decode_request(b64, 96, limits)
    refs = [reference(d) for d in digests]
    with handed_over(refs, batch):
        got, got_digests = images_for(refs, 96, limits)
        assert got is batch and got_digests == digests
        assert (
            images_for(b64, 96, limits)[1] == digests
        )  # other images: decoded, not the handed-over batch
    with pytest.raises(RequestError, match="not base64"):
        images_for(refs, 96, limits)  # outside the request, a reference is no image


def test_serving_model_answers_like_predict(files):
    import keras

    from bloodcell.model.build import build_model
    from bloodcell.model.predict import predict_table

    model = build_model("custom_cnn", ["x", "y", "z"], 64, filters=[8], dense_units=8)
    served = ServingModel.load(model, "m", "3", "production", Limits())
    batch, digests = decode_request([_b64(p.read_bytes()) for p in files], 64, Limits())
    out = served.classify(batch, digests, explain=1)
    table = predict_table(model, batch, [p.name for p in files])
    assert [r["class"] for r in out["predictions"]] == table.predicted_class.tolist()
    for row, (_, expected) in zip(out["predictions"], table.iterrows()):
        assert row["probabilities"] == pytest.approx(
            {c: expected[f"p_{c}"] for c in "xyz"}, abs=1e-6
        )
    assert out["model"] == {
        "name": "m",
        "version": "3",
        "stage": "production",
        "image_size": 64,
        "classes": ["x", "y", "z"],
    }
    assert "occlusion" in out["predictions"][1] and "occlusion" not in out["predictions"][0]
    assert np.array(out["predictions"][1]["occlusion"]["map"]).shape == (8, 8)
    keras.backend.clear_session()


def test_serving_model_with_a_rule_answers_like_score_and_reads_the_rule_once(
    sample_dataset, monkeypatch
):
    """A model with the referral rule: the service's scores are ``referral.score``'s, and the
    rule's options and weights are read from the model once, at load, not on every request."""
    import keras

    from bloodcell.data.split import stratified_split
    from bloodcell.model import referral
    from bloodcell.model.build import build_model
    from bloodcell.model.packaging import with_tta

    keras.utils.set_random_seed(0)
    train, val, _ = stratified_split(sample_dataset, 0.2, 0.05, seed=0)
    size = int(np.asarray(train.images).shape[1])
    base = build_model("custom_cnn", train.class_names, size, filters=[8], dense_units=8)
    model, _ = referral.fit_referral(
        with_tta(base), train, val, referral.ReferralConfig(fit_samples=64)
    )
    looked_up = []
    real_lookup = referral.rule_layer
    monkeypatch.setattr(referral, "rule_layer", lambda m: looked_up.append(1) or real_lookup(m))
    served = ServingModel.load(model, "m", "1", None, Limits())
    assert len(looked_up) == 1  # once at load
    batch = np.asarray(val.images[:12])
    expected = referral.score(model, batch)
    monkeypatch.setattr(referral, "rule_layer", lambda m: pytest.fail("rule looked up per request"))
    monkeypatch.setattr(
        referral.ReferralRule, "arrays", lambda self: pytest.fail("weights read per request")
    )
    got = served.score(batch)
    assert got.status == expected.status and got.reason == expected.reason
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)
    np.testing.assert_allclose(got.distance, expected.distance, rtol=1e-4)
    keras.backend.clear_session()


def _asgi(app, body: bytes, headers: list[tuple[bytes, bytes]], chunk: int = 1000):
    """Run an ASGI app on one POST; returns (status, response body, body the app received)."""
    sent, parts = [], [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive():
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    async def send(message):
        sent.append(message)

    asyncio.run(
        app(
            {"type": "http", "method": "POST", "path": "/invoke", "headers": headers}, receive, send
        )
    )
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_body_size_limit_with_and_without_content_length(monkeypatch):
    from bloodcell.serving import app as serve_app

    monkeypatch.setattr(
        serve_app, "_SERVED", type("S", (), {"limits": Limits(max_body_bytes=5000)})()
    )
    received = []

    async def app(scope, receive, send):
        body, more = b"", True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = m.get("more_body", False)
        received.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = serve_app.BodySizeLimit(app)
    for size, length in ((4000, True), (4000, False), (6000, True), (6000, False)):
        body = b"x" * size
        headers = (
            [(b"content-length", str(size).encode())]
            if length
            else [(b"transfer-encoding", b"chunked")]
        )
        status, answer = _asgi(limited, body, headers)
        if size <= 5000:
            assert status == 200 and received[-1] == body, (size, length)
        else:
            err = json.loads(answer)
            assert (
                status == 413
                and err["details"][0]["rule"] == "a request body has at most 5000 bytes"
            ), (size, length)
    assert len(received) == 2


def test_package_list_patch_fits_the_installed_zenml():
    """Pinned: the internal ``cache_package_list`` replaces is where and what it expects in the
    ZenML installed here; a ZenML upgrade that changes it fails this test (and the service
    start)."""
    from zenml.environment import Environment

    from bloodcell.serving import app as serve_app

    assert serve_app.package_list_target() is vars(Environment)["get_python_packages"].__func__


def test_package_list_is_read_once_and_every_run_records_it(monkeypatch):
    from zenml import environment
    from zenml.environment import Environment

    from bloodcell.serving import app as serve_app

    calls = []

    def listing():
        calls.append(1)
        return ["a==1", "b==2"]

    monkeypatch.setattr(Environment, "get_python_packages", staticmethod(listing))
    assert serve_app.cache_package_list() is True
    assert serve_app.cache_package_list() is True  # already cached: not read again
    for _ in range(3):
        assert environment.get_run_environment_dict()["python_packages"] == "a==1\nb==2"
    assert len(calls) == 1 and Environment.get_python_packages.bloodcell_cached

    def failing():
        raise RuntimeError("no pip")

    monkeypatch.setattr(Environment, "get_python_packages", staticmethod(failing))
    assert serve_app.cache_package_list() is False  # listing fails now: ZenML left as it is
    assert Environment.get_python_packages is failing


@pytest.mark.parametrize(
    "change, message",
    [
        ("gone", "is gone"),
        ("classmethod", "no longer a static method"),
        ("arguments", "takes arguments ['include_editable']"),
        ("not called", "no longer calls"),
    ],
)
def test_package_list_patch_fails_loudly_when_zenml_changed(monkeypatch, change, message):
    from zenml import environment
    from zenml.environment import Environment

    from bloodcell.serving import app as serve_app

    original = vars(Environment)["get_python_packages"]
    if change == "gone":
        monkeypatch.delattr(Environment, "get_python_packages")
    elif change == "classmethod":
        monkeypatch.setattr(Environment, "get_python_packages", classmethod(lambda cls: []))
    elif change == "arguments":
        monkeypatch.setattr(
            Environment,
            "get_python_packages",
            staticmethod(lambda include_editable=False: []),
        )
    else:
        monkeypatch.setattr(environment, "get_run_environment_dict", lambda: {})
    before = vars(Environment).get("get_python_packages")
    with pytest.raises(serve_app.PackageListPatchError, match=re.escape(message)) as err:
        serve_app.cache_package_list()
    assert "BLOODCELL_SERVE_CACHE_PYTHON_PACKAGES=false" in str(err.value)
    assert vars(Environment).get("get_python_packages") is before  # nothing replaced
    monkeypatch.undo()
    assert vars(Environment)["get_python_packages"] is original


def test_the_start_up_hook_fails_when_the_patch_no_longer_fits(monkeypatch, tmp_path):
    """A service asked to cache the package list does not start on a ZenML it cannot patch; asked
    not to, it starts."""
    import keras
    from zenml.environment import Environment

    from bloodcell.model.build import build_model
    from bloodcell.serving import app as serve_app

    path = tmp_path / "m.keras"
    build_model("custom_cnn", ["x", "y"], 32, filters=[4], dense_units=4).save(path)
    monkeypatch.delattr(Environment, "get_python_packages")
    with pytest.raises(serve_app.PackageListPatchError, match="is gone"):
        serve_app.load_served_model(model_path=str(path), sqlite_wal=False)
    served = serve_app.load_served_model(
        model_path=str(path), sqlite_wal=False, cache_python_packages=False
    )
    assert served.classes == ["x", "y"] and serve_app.served() is served
    keras.backend.clear_session()


def test_serving_package_names_no_project_pipeline():
    """bloodcell.serving is imported by pipelines/serving.py; it never names it back (the deployer
    gets the pipeline from its caller: the CLI's ``--source``)."""
    import re

    from conftest import ROOT

    for path in sorted((ROOT / "bloodcell" / "serving").glob("*.py")):
        assert not re.search(r"(?<![\w.])pipelines[./]", path.read_text()), path.name


def test_deploy_takes_the_pipeline_from_its_caller():
    from bloodcell.serving.app import serve_options
    from bloodcell.serving.deploy import serving_pipeline
    from pipelines.serving import serving_pipeline as project_pipeline

    assert serving_pipeline(project_pipeline) is project_pipeline
    assert serving_pipeline("pipelines.serving.serving_pipeline").name == project_pipeline.name

    other = project_pipeline.with_options(on_init=serve_options)
    with pytest.raises(ValueError, match="not 'bloodcell.serving.app.load_served_model'"):
        serving_pipeline(other)
    with pytest.raises(ValueError, match="not a ZenML pipeline"):
        serving_pipeline("bloodcell.serving.app.load_served_model")


def test_serve_options_come_from_arguments_then_the_environment_then_defaults(monkeypatch):
    from bloodcell.serving.app import OPTIONS, serve_options

    assert serve_options() == OPTIONS
    monkeypatch.setenv("BLOODCELL_SERVE_VERSION", "3")
    monkeypatch.setenv("BLOODCELL_SERVE_MAX_IMAGES", "5")
    monkeypatch.setenv("BLOODCELL_SERVE_SQLITE_WAL", "false")
    monkeypatch.setenv("BLOODCELL_SERVE_MODEL_PATH", "")
    o = serve_options(max_images=7)
    assert (
        o["version"] == "3"
        and o["max_images"] == 7
        and o["sqlite_wal"] is False
        and o["model_path"] is None
    )
    assert o["cache_python_packages"] is True and o["max_pixels"] == Limits.max_pixels
