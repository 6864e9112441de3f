r"""How strong the prior correction should be: accuracy against fine_tune's `prior_correction`.

    .venv/bin/python benchmarks/pipeline_timing.py --config configs/train_cpu.yaml --runs 1 \
        --keep /tmp/run
    .venv/bin/python experiments/prior_correction.py /tmp/run [/tmp/run2 ...]

For the last run kept in each DIR by ``pipeline_timing.py --keep``: the shipped model's val, test
and noisy-test (white noise sigma=25, seed 0, as ``evaluate``) errors for each correction strength
in ``--grid``, then the errors summed over the runs. 1.0 shifts the logits by log(originals'
class frequency / rebalanced frequency); the runs' models were shipped with whatever their config
said, and are re-shifted exactly: each of the 8 TTA views' probabilities is multiplied by
exp((strength - shipped) * ratio) and renormalised before the views are averaged, which is what
shifting the output layer's bias does. Pick the strength on the val column. With several runs it
also counts, at that strength, the test images that k of the runs get wrong: the images every
run misses are the floor that more runs of the same recipe (or an ensemble of them) cannot lift.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/reflections of each image, as the shipped model's TTA takes them."""
    from bloodcell.data import dihedral

    return [np.ascontiguousarray(dihedral.transform(images, k)) for k in range(dihedral.COUNT)]


def one_run(kept: Path) -> dict:
    """Per-view probabilities of the kept run's shipped model (runs in a child process: each
    kept run has its own ZenML store)."""
    from kept_run import last_kept_run

    run, load = last_kept_run(kept)
    import keras

    from bloodcell.evaluation import report as evaluation
    from bloodcell.model import packaging

    train, val, test = (
        load("rebalance", "balanced_train"),
        load("split", "val"),
        load("split", "test"),
    )
    shipped = load("fine_tune", "shipped_model")
    inner = next((layer for layer in shipped.layers if isinstance(layer, keras.Model)), shipped)
    sets = {
        "val": (val.images, val.labels),
        "test": (test.images, test.labels),
        "noisy": (evaluation.add_white_noise(test.images, 25.0, seed=0), test.labels),
    }
    return {
        "name": run.name,
        "ratio": packaging.prior_log_ratio(train).tolist(),
        "shipped": float(run.steps["fine_tune"].config.parameters.get("prior_correction", 0.0)),
        "tta": inner is not shipped,
        "test_ids": list(test.ids),
        "sets": {
            k: {
                "labels": y.tolist(),
                "views": [
                    inner.predict(v, batch_size=256, verbose=0).tolist()
                    for v in (views(x) if inner is not shipped else [x])
                ],
            }
            for k, (x, y) in sets.items()
        },
    }


def wrong(result: dict, strength: float) -> dict[str, np.ndarray]:
    """Per set, which samples the model shifted to ``strength`` gets wrong."""
    factor = np.exp((strength - result["shipped"]) * np.asarray(result["ratio"]))
    out = {}
    for name, s in result["sets"].items():
        probs = 0.0
        for p in s["views"]:
            q = np.asarray(p) * factor
            probs = probs + q / q.sum(axis=1, keepdims=True)
        out[name] = np.argmax(probs, axis=1) != np.asarray(s["labels"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", nargs="+", help="DIRs given to pipeline_timing.py --keep")
    parser.add_argument("--grid", default="0,0.5,1,1.5,2,2.5,3", help="correction strengths to try")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        json.dump(one_run(Path(args.kept[0]).resolve()), sys.stdout)
        return
    grid = [float(g) for g in args.grid.split(",")]
    totals = {g: {"val": 0, "test": 0, "noisy": 0} for g in grid}
    results = []
    for kept in args.kept:
        out = subprocess.run(
            [sys.executable, __file__, "--child", kept], check=True, capture_output=True, text=True
        ).stdout
        result = json.loads(out)
        results.append(result)
        n = {k: len(s["labels"]) for k, s in result["sets"].items()}
        print(
            f"{kept} (run {result['name']}, shipped with {result['shipped']:g}, TTA "
            f"{result['tta']}; n = {n['val']} val, {n['test']} test)"
        )
        for g in grid:
            e = {k: int(v.sum()) for k, v in wrong(result, g).items()}
            for k in e:
                totals[g][k] += e[k]
            print(
                f"  {g:4.2f}: "
                + ", ".join(f"{k} {e[k]} errors ({100 * (1 - e[k] / n[k]):.2f}%)" for k in e),
                flush=True,
            )
    if len(args.kept) > 1:
        print(f"summed over {len(args.kept)} runs (errors):")
        for g in grid:
            print(f"  {g:4.2f}: " + ", ".join(f"{k} {v}" for k, v in totals[g].items()))
    best = min(grid, key=lambda g: (totals[g]["val"], abs(g - 1.0)))
    print(f"fewest val errors at prior_correction {best:g}")
    if len(results) > 1:
        ids = results[0]["test_ids"]
        if any(r["test_ids"] != ids for r in results):
            print("the runs have different test splits: no shared-error count")
            return
        missed = sum(wrong(r, best)["test"].astype(int) for r in results)
        counts = np.bincount(missed, minlength=len(results) + 1)
        print(
            f"test images missed by k of the {len(results)} runs at {best:g}: "
            + ", ".join(f"k={k}: {c}" for k, c in enumerate(counts) if k)
        )


if __name__ == "__main__":
    main()
