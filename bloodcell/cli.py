"""The ``bloodcell`` command line.

    bloodcell outliers INPUT --output flagged.csv [--config configs/train_cpu.yaml]
    bloodcell profile FOLDER [--margin 10]                  (a lab's stain ranges, as config YAML)
    bloodcell predict MODEL INPUT --output predictions.csv (MODEL: a .keras file or a version)
    bloodcell export [--version production|latest|N] --output model.keras
    bloodcell adapt [--version production] --data FOLDER --output model.keras
                    [--check [NAME=]FOLDER ...] [--unlabelled]
    bloodcell lineage [--version production|latest|N] [--json]
    bloodcell schedule configs/retrain_weekly.yaml [--log runs.jsonl] [--register]
    bloodcell schedule -c CONFIG --cron "0 3 * * 1"
    bloodcell serve [--version production|latest|N] [--port P] [--host H] [--name N]   (or --stop)

Each command imports what it needs when it runs: TensorFlow only for the commands that load a
model (``predict``, ``export``), with its C++ start-up logging quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bloodcell import MIN_UNLABELLED, MODEL_NAME
from bloodcell.mlops.registry import VERSION_HELP
from bloodcell.mlops.runlog import RunFailed

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ logging, once it is set up


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a while: C++ libraries write there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _load_tensorflow() -> None:
    """Import TensorFlow and let it probe its devices without its start-up lines (oneDNN, CUDA):
    TensorFlow writes them before its logging settings apply. Errors still raise as usual."""
    with _stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()


def cmd_outliers(args: argparse.Namespace) -> int:
    from bloodcell.data.ingest import read_source
    from bloodcell.data.outliers import OutlierConfig, filter_outliers

    ds = read_source(args.input, image_size=args.image_size)
    result = filter_outliers(ds, OutlierConfig.from_pipeline_config(args.config))
    out = result.table[["id", "score", "flagged", "reason"]]
    out.to_csv(args.output, index=False)
    print(f"{int(out.flagged.sum())} of {len(out)} samples flagged; wrote {args.output}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from bloodcell.data.ingest import read_unlabeled
    from bloodcell.data.stain import profile, profile_yaml

    ds = read_unlabeled(args.folder, image_size=args.image_size)
    sys.stdout.write(
        profile_yaml(
            profile(ds.images, margin=args.margin, coverage=args.coverage), len(ds), args.folder
        )
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _load_tensorflow()
    from bloodcell.data.ingest import read_unlabeled
    from bloodcell.model.predict import (
        MAX_UNLIKE_SHARE,
        load_model,
        predict_table,
        unlike_share,
        unlike_warning,
    )
    from bloodcell.model.referral import PREDATES

    if args.model.endswith(".keras") or Path(args.model).exists():
        model = load_model(args.model)
    else:
        from bloodcell.mlops.registry import load_version_model

        version, model = load_version_model(args.model, args.model_name)
        print(f"using {args.model_name} version {version.number} ({version.stage or 'no stage'})")
    images = read_unlabeled(args.input, image_size=int(model.input_shape[1]))
    table = predict_table(model, images.images, images.ids)
    table.to_csv(args.output, index=False)
    counts = table.status.value_counts()
    print(
        f"predicted {len(table)} images: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("accept", "review", "not_a_cell"))
        + f"; wrote {args.output}"
    )
    if len(table) and table.reason.iloc[0] == PREDATES:
        print(
            f"warning: {PREDATES}: every image is accepted; "
            "retrain or export a newer version to get review flags"
        )
    elif unlike_share(table) > MAX_UNLIKE_SHARE:
        print(f"warning: {unlike_warning(unlike_share(table))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bloodcell.mlops.registry import export_model

    _load_tensorflow()
    info = export_model(args.output, args.version, args.model_name)
    acc = (
        f", test accuracy {info['plain_accuracy']:.4f}"
        if isinstance(info["plain_accuracy"], float)
        else ""
    )
    print(
        f"exported {info['name']} version {info['version']} "
        f"({info['stage'] or 'no stage'}{acc}) to {info['output']}"
    )
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from bloodcell.mlops.adapt import run_adaptation

    info = run_adaptation(
        args.version, args.data, args.output, args.check, args.model_name, args.unlabelled
    )
    how = "batch norm from the unlabelled cells of" if args.unlabelled else "adapted"
    print(
        f"{how} {info['name']} version {info['base_version']} to {args.data}: "
        f"new version {info['version']}, PBC test accuracy {info['plain_accuracy']:.4f}; "
        f"exported to {info['output']} (config {info['config']})"
    )
    for check, (acc, bal) in info["checks"].items():
        print(f"check {check}: accuracy {acc:.4f}, balanced accuracy {bal:.4f}")
    print(
        "promote it when it checks out: zenml model version update "
        f"{info['name']} {info['version']} --stage production"
    )
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    import json

    from bloodcell.mlops.lineage import format_lineage, lineage

    info = lineage(args.version, args.model_name)
    sys.stdout.write(
        json.dumps(info, indent=2, default=str) + "\n" if args.json else format_lineage(info)
    )
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    import logging

    from bloodcell.mlops.schedule import load_schedule, register_schedule, run_schedule

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if bool(args.file) == bool(args.config):
        raise ValueError("give one of: a schedule file (configs/retrain_weekly.yaml), or -c CONFIG")
    config, schedule = load_schedule(args.file) if args.file else (args.config, {})
    cron = args.cron or schedule.get("cron_expression")
    if args.register:
        if not cron:
            raise ValueError("--register needs a cron: a schedule file's cron_expression or --cron")
        print(register_schedule(config, {**schedule, "cron_expression": cron}, args.source))
        return 0
    outcomes = run_schedule(cron, config, args.source, args.log, args.max_runs)
    failed = sum(o["status"] == "failed" for o in outcomes)
    print(f"{len(outcomes)} runs, {failed} failed")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bloodcell.serving.deploy import deploy, stop
    from bloodcell.serving.model import Limits

    try:
        if args.stop:
            pid = stop(args.name)
            print(f"deprovisioned {args.name!r}" + (f" (process {pid} ended)" if pid else ""))
            return 0
        limits = Limits(args.max_images, args.max_image_bytes, args.max_pixels, args.max_body_bytes)
        info = deploy(
            args.source,
            args.version,
            args.model_name,
            args.name,
            args.host,
            args.port,
            limits=limits,
        )
    except (RuntimeError, KeyError) as exc:  # a service that did not start; no such deployment
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in info["registered"]:
        print(f"registered {line}")
    if info["journal"]:
        print(
            f"ZenML's SQLite store is in {info['journal']} journal mode "
            "(a request's ~15 commits: see docs/configuration.md)"
        )
    print(
        f"deployment {info['name']!r} on stack {info['stack']!r} serves {info['serving']}; "
        f"page at {info['url']}/"
    )
    print(f"url: {info['url']}")
    print(f"key: {info['key']}")
    return 0


def _outliers_arguments(sub) -> None:
    p = sub.add_parser(
        "outliers", help="run the outlier filter on a folder of class folders or an .npz"
    )
    p.add_argument(
        "input",
        help="folder with one sub-folder per class, or an .npz (challenge or MedMNIST format)",
    )
    p.add_argument("--output", required=True, help="CSV to write: id,score,flagged,reason")
    p.add_argument("--config", help="pipeline YAML whose steps.filter_outliers.parameters to use")
    p.add_argument("--image-size", type=int, default=96)
    p.set_defaults(func=cmd_outliers)


def _profile_arguments(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="propose the stain-colour ranges of a folder of images your lab trusts "
        "(YAML to paste)",
    )
    p.add_argument(
        "folder", help="a folder of images (searched recursively), or an .npz with 'images'"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=10.0,
        help="widen each range by this much on either side (0..255 scale)",
    )
    p.add_argument(
        "--coverage",
        type=float,
        default=1.0,
        help="share of the images' channel means the ranges hold "
        "before the margin (default 1: every image you trust passes)",
    )
    p.add_argument("--image-size", type=int, default=96)
    p.set_defaults(func=cmd_profile)


def _predict_arguments(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify a folder of images or an .npz with an exported .keras model"
    )
    p.add_argument("model", help=f"a .keras file, or a model version: {VERSION_HELP}")
    p.add_argument(
        "input", help="a folder of images (searched recursively) or an .npz with an 'images' array"
    )
    p.add_argument(
        "--output",
        required=True,
        help="CSV to write: id,predicted_class,confidence,status,reason,check,"
        "distance,p_<class>...",
    )
    p.add_argument(
        "--model-name", default=MODEL_NAME, help="registered model, when MODEL is a version"
    )
    p.set_defaults(func=cmd_predict)


def _export_arguments(sub) -> None:
    p = sub.add_parser(
        "export", help="write a model version's model as one self-contained .keras file"
    )
    p.add_argument("--version", default="production", help=VERSION_HELP)
    p.add_argument("--output", required=True, help=".keras file to write")
    p.add_argument("--model-name", default=MODEL_NAME)
    p.set_defaults(func=cmd_export)


def _adapt_arguments(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a model version to a new lab's labelled cells (a new version) and export it",
    )
    p.add_argument("--version", default="production", help=VERSION_HELP)
    p.add_argument(
        "--data",
        required=True,
        help="the new lab's labelled cells: one sub-folder per class (any of the model's); "
        "with --unlabelled, any folder of its cells",
    )
    p.add_argument(
        "--unlabelled",
        action="store_true",
        help="no labels: only recompute batch norm on the lab's cells "
        f"(at least {MIN_UNLABELLED}; a few hundred are better); "
        "a model with no batch norm is refused",
    )
    p.add_argument("--output", required=True, help=".keras file to write the adapted model to")
    p.add_argument(
        "--check",
        nargs="*",
        default=[],
        help="labelled folders ([NAME=]FOLDER) to score the adapted model on",
    )
    p.add_argument("--model-name", default=MODEL_NAME)
    p.set_defaults(func=cmd_adapt)


def _lineage_arguments(sub) -> None:
    p = sub.add_parser("lineage", help="which data, code and checks produced a model version")
    p.add_argument("--version", default="production", help=VERSION_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--model-name", default=MODEL_NAME)
    p.set_defaults(func=cmd_lineage)


def _schedule_arguments(sub) -> None:
    p = sub.add_parser(
        "schedule",
        help="run a pipeline on a cron schedule here, "
        "or register the schedule with the orchestrator",
    )
    p.add_argument(
        "file",
        nargs="?",
        help="schedule file: pipeline_config and schedule (configs/retrain_weekly.yaml)",
    )
    p.add_argument(
        "-c",
        "--config",
        help="a pipeline YAML config to run instead of a schedule file's (with --cron, "
        "or its own schedule.cron_expression)",
    )
    p.add_argument(
        "--cron",
        help="crontab line (5 fields, UTC) or 6 fields with seconds first (default: the file's)",
    )
    p.add_argument(
        "--register",
        action="store_true",
        help="register the schedule with the active stack's orchestrator "
        "(one that runs ZenML schedules) instead of running it from this process",
    )
    p.add_argument(
        "--source", default="pipelines.training.training_pipeline", help="pipeline to run"
    )
    p.add_argument("--log", help="append each run's outcome to this JSON-lines file")
    p.add_argument(
        "--max-runs", type=int, help="stop after this many runs (default: run until interrupted)"
    )
    p.set_defaults(func=cmd_schedule)


def _serve_arguments(sub) -> None:
    from bloodcell.serving.model import Limits

    p = sub.add_parser(
        "serve",
        help="deploy the model as an HTTP service with a web page (prints url and key last)",
    )
    p.add_argument("--version", default="production", help=VERSION_HELP)
    p.add_argument("--model-name", default=MODEL_NAME)
    p.add_argument("--name", default="bloodcell", help="deployment name")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    p.add_argument("--port", type=int, help="port (default 8000, or the next free one)")
    for flag, default in (
        ("max-images", Limits.max_images),
        ("max-image-bytes", Limits.max_image_bytes),
        ("max-pixels", Limits.max_pixels),
        ("max-body-bytes", Limits.max_body_bytes),
    ):
        p.add_argument(
            f"--{flag}", type=int, default=default, help=f"request limit (default {default})"
        )
    p.add_argument(
        "--stop", action="store_true", help="deprovision the deployment: its process ends"
    )
    p.add_argument(
        "--source",
        default="pipelines.serving.serving_pipeline",
        help="serving pipeline to deploy (its on_init: bloodcell.serving.app.load_served_model)",
    )
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloodcell", description="Blood-cell classification pipeline tools"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _outliers_arguments,
        _profile_arguments,
        _predict_arguments,
        _export_arguments,
        _adapt_arguments,
        _lineage_arguments,
        _schedule_arguments,
        _serve_arguments,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, LookupError) as exc:  # IngestError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # the run's own error lines, without a traceback of this process
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
