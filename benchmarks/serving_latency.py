r"""Serving latency and throughput of the deployed model, next to in-process ``model.predict``.

    .venv/bin/bloodcell export --version production \
        --output model.keras      # e.g. the train_cpu.yaml model
    .venv/bin/python benchmarks/serving_latency.py --model model.keras \
        [--screenshot docs/serving.png]
    .venv/bin/python benchmarks/serving_latency.py --model model.keras --single 20 --batches 3 \
        --seconds 5 --compare-n 10

Deploys the model with ``bloodcell.serving.deploy.deploy`` from a throw-away copy of the project
with
a fresh ZenML store, on 127.0.0.1 only, and sends the shipped sample's images (``data/sample``):
``--single`` one-image requests one after another (p50/p95/p99 latency), ``--batches`` requests
of ``--batch-size`` images (img/s), and ``--concurrency`` clients sending one-image requests for
``--seconds`` (img/s, errors). The same images then go through the model in this process
(``model.predict``, and the traced call the service makes), and the ratios are printed. The
service's ``Server-Timing`` header splits each request into decoding, the pipeline run and the
model inside it; the rest of a run is ZenML's bookkeeping (snapshot, run and step records). The
store's growth per request is measured after a WAL checkpoint.

``--compare-n`` one-image requests are also sent to the service deployed without the cached
package list and without WAL, to show what each costs (0: skip). ``--screenshot`` drives the page
in chromium (``make browser``) at the end and saves a picture of it.
"""

from __future__ import annotations

import argparse
import base64
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


class Client:
    def __init__(self, url: str, key: str):
        import requests

        self.url, self.headers, self.session = (
            url,
            {"Authorization": f"Bearer {key}"},
            requests.Session(),
        )

    def invoke(self, images: list[str]) -> tuple[float, int, dict[str, float]]:
        t = time.perf_counter()
        r = self.session.post(
            f"{self.url}/invoke",
            json={"parameters": {"images": images}},
            headers=self.headers,
            timeout=300,
        )
        dt = time.perf_counter() - t
        return dt, r.status_code, server_timing(r.headers.get("server-timing", ""))


def single(client: Client, images: list[str], n: int) -> dict:
    lat, timings, bad = [], [], 0
    for i in range(n):
        dt, status, timing = client.invoke([images[i % len(images)]])
        bad += status != 200
        lat.append(dt)
        timings.append(timing)
    parts = {
        k: statistics.median(t.get(k, 0.0) for t in timings) for k in ("decode", "run", "model")
    }
    return {
        "n": n,
        "errors": bad,
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
        "parts": parts,
    }


def batches(client: Client, images: list[str], n: int, size: int) -> dict:
    total, bad = 0.0, 0
    for i in range(n):
        start = (i * size) % max(1, len(images) - size)
        dt, status, _ = client.invoke(images[start : start + size])
        bad += status != 200
        total += dt
    return {"n": n, "errors": bad, "img_s": n * size / total, "ms_per_request": 1000 * total / n}


def concurrent(
    url: str, key: str, images: list[str], clients: int, seconds: float, size: int
) -> dict:
    done, errors, lock = [0], [0], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(k: int) -> None:
        client, i = Client(url, key), k
        while time.perf_counter() < stop_at:
            try:
                _, status, _ = client.invoke([images[(i + j) % len(images)] for j in range(size)])
                ok = status == 200
            except Exception:
                ok = False
            with lock:
                done[0] += ok
                errors[0] += not ok
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "requests": done[0] + errors[0],
        "errors": errors[0],
        "img_s": done[0] * size / wall,
        "wall_s": wall,
    }


def in_process(model_path: Path, images: list[str], n: int, n_batches: int, size: int) -> dict:
    """The same images, decoded as the service and `bloodcell predict` do, through the model
    here."""
    from collections import Counter

    from bloodcell.data.images import decode_image
    from bloodcell.model.predict import load_model
    from bloodcell.serving.model import Limits, ServingModel

    model = load_model(model_path)
    side = int(model.input_shape[1])
    x = np.stack(
        [
            decode_image(base64.b64decode(s), side, Counter(), f"image {i}")
            for i, s in enumerate(images)
        ]
    ).astype(np.float32)
    traced = ServingModel.load(model, "", "", None, Limits())
    model.predict(x[:size], verbose=0)
    out = {}
    for name, call in (
        ("predict", lambda b: model.predict(b, verbose=0)),
        ("traced", traced.predict),
    ):
        lat = []
        for i in range(n):
            t = time.perf_counter()
            call(x[i % len(x)][None])
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n_batches):
            start = (i * size) % max(1, len(x) - size)
            call(x[start : start + size])
        out[name] = {
            "p50": pct(lat, 50),
            "p95": pct(lat, 95),
            "p99": pct(lat, 99),
            "img_s": n_batches * size / (time.perf_counter() - t),
        }
    return out


def store_bytes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.stat().st_size + (
        db.with_name(db.name + "-wal").stat().st_size
        if db.with_name(db.name + "-wal").exists()
        else 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file (bloodcell export --version ... --output model.keras)",
    )
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--concurrent-batch",
        type=int,
        default=1,
        help="images per request of the concurrent clients",
    )
    parser.add_argument("--compare-n", type=int, default=50)
    parser.add_argument(
        "--screenshot", help="save a screenshot of the page classifying two sample images here"
    )
    args = parser.parse_args()
    model_path = Path(args.model).resolve()
    screenshot = Path(args.screenshot).resolve() if args.screenshot else None
    if not model_path.is_file():
        raise SystemExit(f"{model_path}: no such model file")

    with tempfile.TemporaryDirectory(prefix="bloodcell-serving-") as tmp:
        os.environ.update(
            {
                "ZENML_CONFIG_PATH": str(Path(tmp) / "zenml"),
                "ZENML_ANALYTICS_OPT_IN": "false",
                "ZENML_LOGGING_COLORS_DISABLED": "true",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        from sandbox import make_sandbox

        proj = make_sandbox(Path(tmp) / "proj")
        os.environ["PYTHONPATH"] = str(proj)
        os.chdir(proj)  # the service runs from here: the sandbox is its source root
        from bloodcell.serving.deploy import deploy, stop

        files = sorted((proj / "data" / "sample").rglob("*.jpg"))
        images = [base64.b64encode(f.read_bytes()).decode() for f in files]
        db = Path(tmp) / "zenml" / "local_stores" / "default_zen_store" / "zenml.db"
        name, results = "bench", {}
        try:
            for label, cache, wal in (
                ("ZenML's bookkeeping as is", False, False),
                ("package list cached", True, False),
            ):
                if args.compare_n:
                    info = deploy(
                        "pipelines.serving.serving_pipeline",
                        model_path=str(model_path),
                        name=name,
                        cache_python_packages=cache,
                        sqlite_wal=wal,
                    )
                    results[label] = single(
                        Client(info["url"], info["key"]), images, args.compare_n
                    )
            info = deploy(
                "pipelines.serving.serving_pipeline", model_path=str(model_path), name=name
            )
            client = Client(info["url"], info["key"])
            single(client, images, 3)  # warm up
            before = store_bytes(db)
            results["single"] = single(client, images, args.single)
            results["single_db"] = (store_bytes(db) - before) / max(1, args.single)
            before = store_bytes(db)
            results["batches"] = batches(client, images, args.batches, args.batch_size)
            results["batches_db"] = (store_bytes(db) - before) / max(1, args.batches)
            results["concurrent"] = concurrent(
                info["url"],
                info["key"],
                images,
                args.concurrency,
                args.seconds,
                args.concurrent_batch,
            )
            if screenshot:
                from serving_page import browser_missing, classify_on_page

                reason = browser_missing()
                if reason:
                    print(f"no screenshot: {reason}")
                else:
                    picks = [
                        proj / "data" / "sample" / "neutrophil",
                        proj / "data" / "sample" / "eosinophil",
                    ]
                    page = classify_on_page(
                        info["url"],
                        info["key"],
                        [sorted(p.iterdir())[0] for p in picks],
                        screenshot,
                    )
                    print(f"screenshot {screenshot}: {page['status']} | {page['classes']}")
        finally:
            pid = stop(name)
            print(f"deprovisioned; service process {pid} ended")

    local = in_process(model_path, images, args.single, args.batches, args.batch_size)
    s, b, c, p, t = (
        results["single"],
        results["batches"],
        results["concurrent"],
        local["predict"],
        local["traced"],
    )

    def row(label: str, r: dict, tail: str = "") -> None:
        print(f"{label:52s} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f}   {tail}")

    print(
        f"\nmodel {model_path.name}; {os.cpu_count()} CPU cores; loopback; the images of "
        "data/sample"
    )
    print(f"{'':52s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    row(f"service, 1 image a request (n={s['n']})", s, f"errors {s['errors']}")
    row(
        "in-process model.predict, 1 image", p, f"service/predict at p50: {s['p50'] / p['p50']:.2f}"
    )
    row("in-process traced call (what the step runs), 1 image", t)
    parts = s["parts"]
    print(
        f"  median parts of a service request: decode {parts['decode']:.1f} ms, pipeline run "
        f"{parts['run']:.1f} ms "
        f"(model {parts['model']:.1f} ms, ZenML's bookkeeping {parts['run'] - parts['model']:.1f} "
        f"ms), HTTP and JSON the rest"
    )
    for label in ("ZenML's bookkeeping as is", "package list cached"):
        if label in results:
            r = results[label]
            row(
                f"  {label}, WAL off (n={r['n']})",
                r,
                f"run {r['parts']['run']:.1f} ms (model {r['parts']['model']:.1f})",
            )
    print(
        f"service, {args.batch_size} images a request (n={b['n']}): {b['img_s']:.1f} img/s "
        f"({b['ms_per_request']:.0f} ms a "
        f"request), errors {b['errors']}; in-process model.predict {p['img_s']:.1f} img/s "
        "(service/predict "
        f"{b['img_s'] / p['img_s']:.2f}), traced call {t['img_s']:.1f} img/s (service/traced "
        f"{b['img_s'] / t['img_s']:.2f})"
    )
    print(
        f"service, {args.concurrency} clients for {args.seconds:.0f} s, {args.concurrent_batch} "
        "image(s) a request: "
        f"{c['img_s']:.1f} img/s, {c['requests']} requests, {c['errors']} errors"
    )
    print(
        f"ZenML store growth: {results['single_db'] / 1024:.1f} KiB per 1-image request, "
        f"{results['batches_db'] / 1024:.1f} KiB per {args.batch_size}-image request"
    )


if __name__ == "__main__":
    main()
