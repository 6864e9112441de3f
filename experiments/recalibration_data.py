r"""Which images to recompute batch-norm statistics on: the training augmentation or clean images.

    .venv/bin/python benchmarks/pipeline_timing.py --config configs/train_cpu.yaml --runs 1 \
        --keep /tmp/run
    .venv/bin/python experiments/recalibration_data.py /tmp/run

Takes the trained model of the last run kept by ``pipeline_timing.py --keep`` (its batch norm
recalibrated, as the train step does, on originals passed through the training augmentation),
recalibrates copies of it on the same originals (the train step's own sample) with clean images
or with noise only, and prints val, test and noisy-test (white noise sigma=25) accuracy of each,
with TTA, the prior correction and float32 compute as the pipeline ships them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kept_run import last_kept_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", help="the DIR given to pipeline_timing.py --keep")
    args = parser.parse_args()
    run, load = last_kept_run(Path(args.kept))
    import keras

    from bloodcell.augment.online import OnlineAugment
    from bloodcell.evaluation import report as evaluation
    from bloodcell.model import batchnorm as calibration
    from bloodcell.model import packaging, training
    from bloodcell.model.predict import accuracy

    train, val, test = (
        load("rebalance", "balanced_train"),
        load("split", "val"),
        load("split", "test"),
    )
    trained = load("train", "model")
    noisy = evaluation.add_white_noise(test.images, 25.0, seed=0)
    cfg = training.TrainConfig.from_dict(run.steps["train"].config.parameters.get("training"))
    originals = train.originals()
    strength = float(run.steps["fine_tune"].config.parameters.get("prior_correction", 0.0))
    variants = {
        "as trained (the training augmentation)": None,
        "clean (flips only)": OnlineAugment(dihedral=True, noise_sigma_max=0.0),
        "noise only": OnlineAugment(
            dihedral=True,
            noise_sigma_max=cfg.augment.noise_sigma_max,
            noise_probability=cfg.augment.noise_probability,
        ),
    }
    print(
        f"run {run.name}: the train step's final recalibration sample for each "
        f"({cfg.recalibrate_final_samples or len(originals)} of {len(originals)} originals)"
    )
    for name, aug in variants.items():
        model = keras.models.clone_model(trained)
        model.set_weights(trained.get_weights())
        if aug is not None:
            calibration.recalibrate_on(
                model, originals, cfg.recalibrate_final_samples, aug, cfg.seed + 1
            )
        tta, _ = packaging.package_model(
            model, train, val, tta=True, prior_correction=strength
        )  # as fine_tune ships it
        print(
            f"{name}: val {accuracy(tta, val.images, val.labels):.4f}, "
            f"test {accuracy(tta, test.images, test.labels):.4f}, "
            f"noisy test {accuracy(tta, noisy, test.labels):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
