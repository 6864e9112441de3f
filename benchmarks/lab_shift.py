r"""The lab-shift table: a trained model on other labs' images, zero-shot and after adaptation.

    .venv/bin/python benchmarks/pipeline_timing.py --config configs/train_cpu.yaml --runs 1 \
        --keep /tmp/run
    .venv/bin/python benchmarks/lab_shift.py /tmp/run [--k 5,20] [--seeds 0,1,2] \
        [--prior-correction 0]

For the run kept in DIR: its shipped model and, from its own evaluation report, accuracy on the
PBC test split, under white noise (sigma=25) and the corruption-table mean. Then for each external
set (default: the two in ../shared/data/external): accuracy and balanced accuracy (mean recall
over the classes present) zero-shot; with batch-norm statistics recomputed on the set's images
(no labels; a model without batch norm has none); and after adaptation
(``bloodcell.model.adaptation.adapt_model``, the run's training data
replayed) on k labelled cells per class, scored on the set's other cells, the mean over seeds
(the zero-shot figure on the same held-out cells is printed beside it), and the PBC test accuracy
of the model adapted with the largest k and the first seed (what the adaptation costs at home).
``--prior-correction S`` re-shifts the shipped model's logits to strength S first (as ``fine_tune``
with ``prior_correction: S`` would have shipped it) and evaluates it again on the PBC test split.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
EXTERNAL = ROOT.parent / "shared" / "data" / "external"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", help="a DIR given to pipeline_timing.py --keep")
    parser.add_argument(
        "--external",
        nargs="*",
        default=[f"jtsc={EXTERNAL / 'jtsc'}", f"cellavision_blog={EXTERNAL / 'cellavision_blog'}"],
        help="NAME=FOLDER of class folders, each",
    )
    parser.add_argument("--k", default="5,20", help="labelled cells per class for adaptation")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--prior-correction",
        type=float,
        help="ship the model with this strength instead of the run's",
    )
    args = parser.parse_args()
    from kept_run import last_kept_run

    run, load = last_kept_run(Path(args.kept))
    from bloodcell.data.ingest import read_external
    from bloodcell.evaluation.report import corruption_mean, dataset_metrics, external_sets
    from bloodcell.model.adaptation import adapt_model, recalibrated_on, split_for_adaptation
    from bloodcell.model.batchnorm import batchnorm_layers
    from bloodcell.model.predict import model_classes

    model, train, test = (
        load("fine_tune", "shipped_model"),
        load("rebalance", "balanced_train"),
        load("split", "test"),
    )
    report = load("evaluate", "evaluation")

    def home(how: str) -> None:
        print(
            f"run {run.name}, {how}: PBC test (n={report.sets['plain'].n}) plain "
            f"{report.sets['plain'].accuracy:.4f}, "
            f"macro-F1 {report.sets['plain'].macro_f1:.4f}, noisy sigma=25 "
            f"{report.sets['noisy'].accuracy:.4f}, "
            f"corruption mean {corruption_mean(report.corruptions):.4f} "
            f"({sum(1 for r in report.corruptions if r['severity'])} settings)",
            flush=True,
        )

    shipped = run.steps["fine_tune"].run_metadata.get("prior_correction") or {}
    home(f"as shipped (prior correction per class: {shipped or 'none'})")
    if args.prior_correction is not None:
        from bloodcell.evaluation.report import evaluate_model
        from bloodcell.model.build import network_of
        from bloodcell.model.packaging import prior_log_ratio, shift_logits

        target = args.prior_correction * prior_log_ratio(train)
        shift_logits(
            network_of(model), target - np.array([shipped.get(c, 0.0) for c in train.class_names])
        )
        report = evaluate_model(
            model,
            test,
            noise_sigma=report.params["noise_sigma"],
            seed=report.params["noise_seed"],
            corruption_samples=report.corruptions[0]["n"] if report.corruptions else None,
        )
        home(f"re-shipped with prior correction {args.prior_correction:g}")
    size = int(model.input_shape[1])
    specs = [dict(zip(("name", "path"), item.split("=", 1))) for item in args.external]
    sets = external_sets(read_external(specs, size))
    ks, seeds = [int(k) for k in args.k.split(",")], [int(s) for s in args.seeds.split(",")]

    def scores(m, ds):
        metrics = dataset_metrics(m, ds, "external set")
        return metrics.accuracy, metrics.balanced_accuracy

    for name, ds in sets.items():
        present = sorted({ds.class_names[i] for i in ds.labels})
        unknown = [c for c in present if c not in model_classes(model)]
        if unknown:
            raise SystemExit(f"{name}: classes {unknown} are not among the model's")
        acc, bal = scores(model, ds)
        unlabelled = (
            f"balanced accuracy {scores(recalibrated_on(model, ds), ds)[1]:.4f}"
            if batchnorm_layers(model)
            else "none to recompute (no batch norm)"
        )
        counts = ", ".join(
            f"{c} {int((ds.labels == ds.class_names.index(c)).sum())}" for c in present
        )
        print(f"\n{name} (n={len(ds)}; {counts})")
        print(
            f"  zero-shot: accuracy {acc:.4f}, balanced accuracy {bal:.4f}; "
            "batch norm from its images (no labels): "
            f"{unlabelled}",
            flush=True,
        )
        for k in ks:
            adapted_bal, base_bal, wall = [], [], []
            for seed in seeds:
                adapt_set, rest = split_for_adaptation(ds, k, seed)
                start = time.perf_counter()
                adapted, _ = adapt_model(model, adapt_set, replay=train)
                wall.append(time.perf_counter() - start)
                adapted_bal.append(scores(adapted, rest)[1])
                base_bal.append(scores(model, rest)[1])
                if k == max(ks) and seed == seeds[0]:
                    home = dataset_metrics(adapted, test, "test split").accuracy
            print(
                f"  k={k:2d}: balanced accuracy {np.mean(adapted_bal):.4f} "
                f"(seeds {', '.join(f'{b:.3f}' for b in adapted_bal)}; "
                f"zero-shot on the same cells {np.mean(base_bal):.4f}); "
                f"{np.mean(wall):.0f} s an adaptation",
                flush=True,
            )
        print(
            f"  PBC test accuracy after adapting to {name} (k={max(ks)}, seed {seeds[0]}): "
            f"{home:.4f}"
        )


if __name__ == "__main__":
    main()
