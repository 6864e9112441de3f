r"""EfficientNetV2 transfer-learning throughput: the head phase (backbone frozen), the fine-tuning
phase (top stages unfrozen, batch norm frozen) and TTA inference, for the GPU recipe's model.

    .venv/bin/python benchmarks/transfer_throughput.py [--architecture efficientnetv2s] \
        [--images 4096]
        [--epochs 2] [--batch-size 64] [--mixed-precision]

Uses only `bloodcell.model.build` and Keras, so it runs on any Keras 3 backend (KERAS_BACKEND=jax on
a machine without TensorFlow). Weights are random (`weights: null`): throughput does not depend on
them. Images: the shipped sample, repeated to --images. Each phase fits --epochs epochs and is
timed on the last (the first includes compilation).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="efficientnetv2s")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--unfreeze-blocks", type=int, default=2)
    args = parser.parse_args()

    from bloodcell.data.ingest import read_source
    from bloodcell.model.build import build_model
    from bloodcell.model.packaging import with_tta
    from bloodcell.model.transfer import unfreeze_top

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    sample = read_source(Path(__file__).resolve().parent.parent / "data" / "sample")
    reps = -(-args.images // len(sample))
    x = np.concatenate([sample.images] * reps)[: args.images].astype(np.float32)
    y = keras.utils.to_categorical(np.concatenate([sample.labels] * reps)[: args.images], 8)

    def fit_rate(model, lr: float) -> tuple[float, float]:
        model.compile(
            optimizer=keras.optimizers.AdamW(lr),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
        timer = EpochTimer()
        hist = model.fit(
            x, y, batch_size=args.batch_size, epochs=args.epochs, callbacks=[timer], verbose=0
        )
        return len(x) / timer.times[-1], float(hist.history["loss"][-1])

    print(
        f"backend {keras.backend.backend()}, policy {keras.mixed_precision.global_policy().name}, "
        f"{args.architecture}, {len(x)} images 96x96, batch {args.batch_size}, {args.epochs} "
        "epochs per phase"
    )
    model = build_model(args.architecture, 8, 96, weights=None)
    rate, loss = fit_rate(model, 4e-4)
    print(f"head phase (backbone frozen)      : {rate:8.1f} img/s  (last loss {loss:.3f})")
    unfrozen = unfreeze_top(model, args.unfreeze_blocks, 1e-4)
    rate, loss = fit_rate(model, 1e-5)
    print(
        f"fine-tune phase ({len(unfrozen)} layers open) : {rate:8.1f} img/s  (last loss {loss:.3f})"
    )
    tta = with_tta(model)
    tta.predict(x[:512], batch_size=256, verbose=0)
    start = time.perf_counter()
    tta.predict(x, batch_size=256, verbose=0)
    print(
        f"TTA inference (8 views)           : {len(x) / (time.perf_counter() - start):8.1f} img/s"
    )


if __name__ == "__main__":
    main()
