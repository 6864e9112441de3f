"""Rebalancing augmentation throughput of each engine, side by side.

    .venv/bin/python benchmarks/augment_throughput.py [--images 8192] [--keras-cv-images 1024]

Times `bloodcell.augment.augment_images` (flips/90-degree rotations, then RandAugment on half the
images and AugMix on the other half) on real images from the shipped sample, with the Keras 3
core layers (the default engine) and with keras-cv's layers. The time is the whole call, building
and compiling the augmentation included; 8192 is about what rebalancing generates on pbc96. keras-cv
runs eagerly at a rate that does not depend on the count, so it is timed on fewer images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bloodcell.augment.rebalance import ENGINES, augment_images  # noqa: E402
from bloodcell.data.ingest import read_source  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--keras-cv-images", type=int, default=1024)
    args = parser.parse_args()
    sample = read_source(Path(__file__).resolve().parent.parent / "data" / "sample").images
    for engine in ENGINES:
        count = args.keras_cv_images if engine == "keras_cv" else args.images
        images = np.concatenate([sample] * (-(-count // len(sample))))[:count]
        augment_images(images[:64], engine=engine)  # imports and first use of TensorFlow
        start = time.perf_counter()
        augment_images(images, engine=engine)
        wall = time.perf_counter() - start
        print(f"{engine:9s}: {len(images) / wall:7.1f} img/s ({len(images)} images, {wall:.1f} s)")


if __name__ == "__main__":
    main()
