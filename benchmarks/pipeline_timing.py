"""Pipeline timing: wall time and peak RSS of `zenml pipeline run`, first run and cached reruns.

    .venv/bin/python benchmarks/pipeline_timing.py                      # quickstart, run twice
    .venv/bin/python benchmarks/pipeline_timing.py --config configs/train_cpu.yaml --runs 1

Runs in a throw-away copy of the project with a fresh ZenML store (so the first run is a real
one, not a cache hit), and prints each run's wall time and peak RSS, which steps were cached, the
time it takes just to import TensorFlow + Keras, and the first run's test-split accuracies.
A relative `steps.ingest.parameters.source` in the config is taken relative to the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sandbox import ROOT, ZENML, make_sandbox  # noqa: E402

MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": rc.returncode, "wall_s": wall, "peak_rss_mb": rss, \
"err": rc.stderr[-3000:]}))
"""


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result['err']}")
    return result


def sandbox_config(proj: Path, config: str) -> str:
    """The config, with relative data sources made absolute against the repository root."""
    cfg = yaml.safe_load((ROOT / config).read_text())
    steps = cfg.setdefault("steps", {})
    ingest = steps.setdefault("ingest", {}).setdefault("parameters", {})
    source = Path(ingest.get("source", "data/sample"))
    if not source.is_absolute() and not str(source).startswith("data/sample"):
        ingest["source"] = str((ROOT / source).resolve())
    for spec in steps.get("ingest_external", {}).get("parameters", {}).get("external") or []:
        spec["path"] = str((ROOT / spec["path"]).resolve())
    out = proj / "configs" / ("bench_" + Path(config).name)
    out.write_text(yaml.safe_dump(cfg))
    return str(out.relative_to(proj))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--save-report", help="also write the first run's evaluation report (JSON) here"
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="run in DIR (a new folder) and keep it: its ZenML store "
        "(ZENML_CONFIG_PATH=DIR/zenml) holds the runs' artifacts for a closer look",
    )
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=False)
    with (
        contextlib.nullcontext(args.keep)
        if args.keep
        else tempfile.TemporaryDirectory(prefix="bloodcell-bench-")
    ) as tmp:
        env = {
            **os.environ,
            "ZENML_CONFIG_PATH": str(Path(tmp) / "zenml"),
            "ZENML_ANALYTICS_OPT_IN": "false",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        os.environ.update(env)
        proj = make_sandbox(Path(tmp) / "proj")
        env["PYTHONPATH"] = str(proj)
        config = sandbox_config(proj, args.config)
        tf_import = measure([sys.executable, "-c", "import tensorflow, keras"], proj, env)
        cmd = [ZENML, "pipeline", "run", "pipelines.training.training_pipeline", "-c", config]
        runs = [measure(cmd, proj, env) for _ in range(args.runs)]

        from zenml.client import Client

        pipeline_runs = Client().list_pipeline_runs(sort_by="asc:created", size=args.runs).items
        print(f"config: {args.config}")
        print(f"import tensorflow+keras : {tf_import['wall_s']:7.1f} s")
        for i, (r, pr) in enumerate(zip(runs, pipeline_runs), 1):
            cached = [n for n, s in pr.steps.items() if str(s.status) == "cached"]
            print(
                f"run {i}: {r['wall_s']:7.1f} s wall, peak RSS {r['peak_rss_mb']:6.0f} MB, "
                f"{r['wall_s'] - tf_import['wall_s']:6.1f} s beyond TF import, cached steps: "
                f"{', '.join(cached) or 'none'}"
            )
        first = pipeline_runs[0]
        report = first.steps["evaluate"].outputs["evaluation"][0].load()
        from bloodcell.evaluation.report import corruption_mean

        train_info = first.steps["train"].outputs["training_history"][0].load()
        print(
            f"train step: {train_info.epochs} epochs, {train_info.info.get('wall_seconds')} s, "
            f"{train_info.info.get('images_per_second')} img/s"
        )
        tuned = first.steps["fine_tune"].run_metadata
        if "val_accuracy_uncorrected" in tuned:
            print(
                "fine_tune: prior correction, val accuracy "
                f"{tuned['val_accuracy_uncorrected']:.4f} without, "
                f"{tuned['val_accuracy']:.4f} with"
            )
        print(
            f"test split (n={report.sets['plain'].n}): plain accuracy "
            f"{report.sets['plain'].accuracy:.4f}, "
            f"macro-F1 {report.sets['plain'].macro_f1:.4f}; white noise "
            f"sigma={report.params['noise_sigma']:g}: "
            f"accuracy {report.sets['noisy'].accuracy:.4f}"
        )
        for name, m in report.external.items():
            recall = ", ".join(
                f"{c} {m.per_class[c]['recall']:.3f} (n={int(m.per_class[c]['support'])})"
                for c in m.present
            )
            print(
                f"external set {name} (n={m.n}): accuracy {m.accuracy:.4f}, balanced accuracy "
                f"{m.balanced_accuracy:.4f}; recall {recall}"
            )
        if report.corruptions:
            settings = sum(1 for r in report.corruptions if r["severity"])
            print(
                f"corruptions (accuracy on {report.corruptions[0]['n']} test images; mean over the "
                f"{settings} corrupted settings {corruption_mean(report.corruptions):.4f}):"
            )
            for r in report.corruptions:
                if r["severity"]:
                    print(
                        f"  {r['corruption']:10s} severity {r['severity']} ({r['setting']:g}): "
                        f"{r['accuracy']:.4f}"
                    )
        if args.save_report:
            Path(args.save_report).write_text(json.dumps(report.to_dict(), indent=1))


if __name__ == "__main__":
    main()
