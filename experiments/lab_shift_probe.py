r"""Short training runs that compare lab-shift settings on other labs' images (validation only).

    .venv/bin/python experiments/lab_shift_probe.py --variants variants.json [--train 4000] \
        [--epochs 12]

``variants.json`` maps a name to ``{"architecture": ..., "model": {...}, "training": {...},
"fine_tune": {...}}``: the train step's architecture (default ``custom_cnn``) and options (unset
options keep the steps' defaults; ``epochs`` and ``swa_epochs`` default to the probe's), and for a
transfer model the fine_tune step's ``unfreeze_blocks``, ``l2`` and ``training``. Each variant
trains on a seeded sample of the pbc96 train split (no rebalancing, so no prior correction),
fine-tunes a transfer model as the fine_tune step does, packages it with TTA as fine_tune does,
and prints PBC val accuracy (plain and white noise sigma=25), the corruption mean on 512 val
images, and accuracy / balanced accuracy on each external set (and the balanced accuracy with
batch-norm
statistics from the set's own unlabelled images). Settings are chosen on these figures; the test
split is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {
    "jtsc": ROOT.parent / "shared/data/external/jtsc",
    "cellavision_blog": ROOT.parent / "shared/data/external/cellavision_blog",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", required=True, help="JSON file: name -> {model: {...}, training: {...}}"
    )
    parser.add_argument("--only", help="comma-separated variant names to run")
    parser.add_argument(
        "--train",
        type=int,
        default=4000,
        help="training images (a seeded sample of the train split)",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/pbc96"))
    parser.add_argument("--out", help="append each variant's figures to this JSON-lines file")
    args = parser.parse_args()
    variants = json.loads(Path(args.variants).read_text())
    if args.only:
        variants = {k: variants[k] for k in args.only.split(",")}

    import keras

    from bloodcell.data.ingest import read_external, read_source
    from bloodcell.data.split import stratified_split
    from bloodcell.evaluation.report import (
        corruption_mean,
        corruption_table,
        dataset_metrics,
        evaluate_model,
        external_sets,
    )
    from bloodcell.model.adaptation import recalibrated_on
    from bloodcell.model.build import build_model
    from bloodcell.model.compute import compute_scope
    from bloodcell.model.packaging import package_model
    from bloodcell.model.training import TrainConfig, fine_tune_config, fine_tune_model, train_model
    from bloodcell.model.transfer import backbone_of

    data = read_source(args.data)
    train, val, _ = stratified_split(data, 0.1, 0.1, 42)
    train = train.sample(args.train, seed=0)
    external = read_external([{"name": k, "path": str(v)} for k, v in SETS.items()], 96)
    picked = val.sample(512, 0)
    print(
        f"{len(train)} training images, {args.epochs} epochs; val {len(val)}; external "
        f"{len(external)}",
        flush=True,
    )
    for name, spec in variants.items():
        training = {
            "epochs": args.epochs,
            "swa_epochs": max(1, args.epochs // 4),
            "verbose": 0,
            "recalibrate_samples_per_epoch": 512,
            **spec.get("training", {}),
        }
        cfg = TrainConfig.from_dict(training)
        start = time.perf_counter()
        with compute_scope(cfg.compute_policy, cfg.distribute):
            keras.utils.set_random_seed(cfg.seed)
            model = build_model(
                spec.get("architecture", "custom_cnn"),
                train.class_names,
                96,
                **spec.get("model", {}),
            )
            history = train_model(model, train, val, cfg)
        seen = len(train) * len(history["loss"])
        if backbone_of(model) is not None and "fine_tune" in spec:
            tune = spec["fine_tune"]
            tune_cfg = fine_tune_config({"verbose": 0, **tune.get("training", {})})
            with compute_scope(tune_cfg.compute_policy, tune_cfg.distribute):
                model, history, _ = fine_tune_model(
                    model,
                    train,
                    val,
                    tune.get("unfreeze_blocks", 2),
                    tune.get("l2", 1e-4),
                    tune_cfg,
                )
            seen += len(train) * len(history["loss"])
        wall = time.perf_counter() - start
        shipped, _ = package_model(model, train, val, tta=True, prior_correction=0.0)
        report = evaluate_model(shipped, val, corruption_samples=None, external=external)
        noisy = report.sets["noisy"].accuracy
        corr = corruption_mean(corruption_table(shipped, picked.images, picked.labels))
        adabn = {}
        for set_name, part in external_sets(
            external
        ).items():  # batch norm from the set's own (unlabelled) images
            adabn[set_name] = dataset_metrics(
                recalibrated_on(shipped, part), part, set_name
            ).balanced_accuracy
        ext = "  ".join(
            f"{k} {m.accuracy:.3f}/{m.balanced_accuracy:.3f} (bn {adabn[k]:.3f})"
            for k, m in report.external.items()
        )
        if args.out:
            record = {
                "variant": name,
                "spec": spec,
                "train": len(train),
                "epochs": args.epochs,
                "val": report.sets["plain"].accuracy,
                "noisy": noisy,
                "corruption_mean": corr,
                "wall_min": round(wall / 60, 2),
                "img_per_s": round(seen / wall, 1),
                **{f"{k}_acc": m.accuracy for k, m in report.external.items()},
                **{f"{k}_bal": m.balanced_accuracy for k, m in report.external.items()},
                **{f"{k}_bal_bn": v for k, v in adabn.items()},
            }
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
        print(
            f"{name:24s} val {report.sets['plain'].accuracy:.4f} noisy {noisy:.4f} corr {corr:.4f} "
            f"| {ext} | {seen / wall:.0f} img/s, {wall / 60:.1f} min",
            flush=True,
        )


if __name__ == "__main__":
    main()
