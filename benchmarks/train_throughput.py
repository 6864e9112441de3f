r"""Training throughput: the train step's own training function next to a plain Keras `model.fit`.

    .venv/bin/python benchmarks/train_throughput.py [--config configs/train_cpu.yaml] \
        [--images 4096] [--epochs 3]
        [--mixed-precision false|bfloat16|float16|auto]

Both train the model the config describes, from the same initial weights, on the same images
(a stratified subset of the config's source, or the shipped sample if that is missing) for the
same epochs and batch size, with validation each epoch. The train step's function adds what the
pipeline needs: the tf.data pipeline with online augmentation (flips/rotations, noise), batch-norm
recalibration before each validation and at the end, LR schedule, early stopping and backups.
Plain `fit` gets the images as arrays and nothing else. Both run under the config's compute
policy (`mixed_precision`, or the one given). Prints both img/s and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train_cpu.yaml")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--mixed-precision",
        default=None,
        type=lambda v: {"false": False, "true": True}.get(v, v),
        help="override the config's training.mixed_precision",
    )
    args = parser.parse_args()

    import keras

    from bloodcell.data.ingest import read_source
    from bloodcell.data.split import stratified_split
    from bloodcell.model.build import build_model
    from bloodcell.model.compute import compute_scope
    from bloodcell.model.training import TrainConfig, compile_model, train_model

    cfg = yaml.safe_load((ROOT / args.config).read_text())["steps"]
    source = Path(cfg["ingest"]["parameters"]["source"])
    source = source if source.is_absolute() else ROOT / source
    if not source.exists():
        print(f"{source} not found: using the shipped sample")
        source = ROOT / "data" / "sample"
    data = read_source(source)
    train, val, _ = stratified_split(data, val_fraction=0.1, test_fraction=0.1, seed=0)
    train = train.sample(args.images, seed=0)
    params = cfg.get("train", {}).get("parameters", {})
    training = {
        **params.get("training", {}),
        "epochs": args.epochs,
        "verbose": 0,
        "early_stopping_patience": 100,
    }
    recipe = TrainConfig.from_dict(params.get("training"))
    if recipe.swa_epochs:  # keep weight averaging (and its cost) in the shorter run
        training["swa_epochs"] = min(recipe.swa_epochs, args.epochs - 1)
    if recipe.warmup_epochs:  # a warm-up costs nothing a step; it only has to fit the shorter run
        training["warmup_epochs"] = min(
            recipe.warmup_epochs, max(0, args.epochs - 1 - training.get("swa_epochs", 0))
        )
    if args.mixed_precision is not None:
        training["mixed_precision"] = args.mixed_precision

    def fresh():
        keras.utils.set_random_seed(0)
        return build_model(
            params.get("architecture", "custom_cnn"),
            len(train.class_names),
            train.images.shape[1],
            **params.get("model", {}),
        )

    with tempfile.TemporaryDirectory() as backups:
        step_cfg = TrainConfig.from_dict({**training, "backup_dir": backups})
        with compute_scope(step_cfg.compute_policy, step_cfg.distribute):
            model = fresh()
            start = time.perf_counter()
            train_model(model, train, val, step_cfg)
            step_rate = len(train) * args.epochs / (time.perf_counter() - start)

    with compute_scope(step_cfg.compute_policy, step_cfg.distribute):
        model = fresh()
        compile_model(model, step_cfg, steps_per_epoch=-(-len(train) // step_cfg.batch_size))
        x, y = (
            train.images.astype(np.float32),
            keras.utils.to_categorical(train.labels, len(train.class_names)),
        )
        vx, vy = (
            val.images.astype(np.float32),
            keras.utils.to_categorical(val.labels, len(val.class_names)),
        )
        start = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=step_cfg.batch_size,
            epochs=args.epochs,
            validation_data=(vx, vy),
            verbose=0,
        )
        plain_rate = len(train) * args.epochs / (time.perf_counter() - start)

    print(
        f"config {args.config}, {len(train)} training images, {len(val)} validation, {args.epochs} "
        f"epochs, batch {step_cfg.batch_size}, compute policy {step_cfg.compute_policy}"
    )
    print(f"train step (bloodcell.model.training.train_model): {step_rate:7.1f} img/s")
    print(f"plain keras model.fit                      : {plain_rate:7.1f} img/s")
    print(f"ratio                                      : {step_rate / plain_rate:7.3f}")


if __name__ == "__main__":
    main()
