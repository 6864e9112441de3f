"""Short training runs that compare lab-shift settings on other labs' images (validation only).

    .venv/bin/python experiments/lab_shift_probe.py --variants variants.json [--train 4000] [--epochs 12]

``variants.json`` maps a name to ``{"model": {...}, "training": {...}}`` (the train step's options;
unset options keep the CPU recipe). Each variant trains the custom CNN on a seeded sample of the
pbc96 train split (no rebalancing, so no prior correction), packages it with TTA as fine_tune does,
and prints PBC val accuracy (plain and white noise sigma=25), the corruption mean on 512 val
images, and accuracy / balanced accuracy on each external set (and the balanced accuracy with batch-norm
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

SETS = {"jtsc": ROOT.parent / "shared/data/external/jtsc", "cellavision_blog": ROOT.parent / "shared/data/external/cellavision_blog"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", required=True, help="JSON file: name -> {model: {...}, training: {...}}")
    parser.add_argument("--only", help="comma-separated variant names to run")
    parser.add_argument("--train", type=int, default=4000, help="training images (a seeded sample of the train split)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/pbc96"))
    args = parser.parse_args()
    variants = json.loads(Path(args.variants).read_text())
    if args.only:
        variants = {k: variants[k] for k in args.only.split(",")}

    import keras

    from bloodcell.adaptation import recalibrated_on
    from bloodcell.compute import compute_scope
    from bloodcell.evaluation import corruption_mean, corruption_table, dataset_metrics, evaluate_model, external_sets
    from bloodcell.ingest import read_external, read_source
    from bloodcell.models import build_model
    from bloodcell.packaging import package_model
    from bloodcell.split import stratified_split
    from bloodcell.training import TrainConfig, train_model

    data = read_source(args.data)
    train, val, _ = stratified_split(data, 0.1, 0.1, 42)
    train = train.sample(args.train, seed=0)
    external = read_external([{"name": k, "path": str(v)} for k, v in SETS.items()], 96)
    picked = val.sample(512, 0)
    print(f"{len(train)} training images, {args.epochs} epochs; val {len(val)}; external {len(external)}", flush=True)
    for name, spec in variants.items():
        training = {"epochs": args.epochs, "swa_epochs": max(1, args.epochs // 4), "verbose": 0,
                    "recalibrate_samples_per_epoch": 512, **spec.get("training", {})}
        cfg = TrainConfig.from_dict(training)
        start = time.perf_counter()
        with compute_scope(cfg.compute_policy, cfg.distribute):
            keras.utils.set_random_seed(0)
            model = build_model("custom_cnn", train.class_names, 96, **spec.get("model", {}))
            train_model(model, train, val, cfg)
        wall = time.perf_counter() - start
        shipped, _ = package_model(model, train, val, tta=True, prior_correction=0.0)
        report = evaluate_model(shipped, val, corruption_samples=None, external=external)
        noisy = report.sets["noisy"].accuracy
        corr = corruption_mean(corruption_table(shipped, picked.images, picked.labels))
        adabn = {}
        for set_name, part in external_sets(external).items():  # batch norm from the set's own (unlabelled) images
            adabn[set_name] = dataset_metrics(recalibrated_on(shipped, part), part, set_name).balanced_accuracy
        ext = "  ".join(f"{k} {m.accuracy:.3f}/{m.balanced_accuracy:.3f} (bn {adabn[k]:.3f})" for k, m in report.external.items())
        print(f"{name:24s} val {report.sets['plain'].accuracy:.4f} noisy {noisy:.4f} corr {corr:.4f} "
              f"| {ext} | {len(train) * args.epochs / wall:.0f} img/s", flush=True)


if __name__ == "__main__":
    main()
