"""Throughput of the two streaming paths of issue 22: decoding a folder of images (ingest), one
thread against one a core, and the training input pipeline fed from memory against streamed from
shards (no augmentation: the pipeline's own cost).

    .venv/bin/python benchmarks/stream_throughput.py [--images 4000] [--repeat 40]

The images are the first ``--images`` files of pbc96 (the shipped sample if it is missing); the
input pipeline gets the shipped sample repeated ``--repeat`` times, written as 64 MiB shards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bloodcell.data import shards
    from bloodcell.data.dataset import Dataset
    from bloodcell.data.images import load_image
    from bloodcell.data.ingest import read_source
    from bloodcell.data.sharded_images import ShardedImages
    from bloodcell.model import input_pipeline

    source = ROOT.parent / "shared" / "data" / "pbc96"
    source = source if source.exists() else ROOT / "data" / "sample"
    files = sorted(
        p
        for p in source.glob("*/*")
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
    )
    files = files[: args.images]
    t = time.perf_counter()
    for f in files:
        load_image(f, 96, Counter())
    serial = len(files) / (time.perf_counter() - t)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        t = time.perf_counter()
        list(pool.map(lambda f: load_image(f, 96, Counter()), files))
        threaded = len(files) / (time.perf_counter() - t)
    print(
        f"decoding {len(files)} files of {source.name}: {serial:,.0f} img/s in one thread, "
        f"{threaded:,.0f} img/s in {os.cpu_count()} threads"
    )

    sample = read_source(ROOT / "data" / "sample")
    images = np.concatenate([sample.images] * args.repeat)
    labels = np.concatenate([sample.labels] * args.repeat)
    ids = [str(i) for i in range(len(images))]
    with tempfile.TemporaryDirectory() as tmp:
        written = shards.write_shards(tmp, images)
        lazy = Dataset(
            ShardedImages([(tmp, s) for s in written], images.shape[1:]),
            labels,
            ids,
            sample.class_names,
        )
        for name, ds, limit in (
            ("from memory", Dataset(images, labels, ids, sample.class_names), 2**62),
            ("streamed from shards", lazy, 0),
        ):
            input_pipeline.IN_MEMORY_BYTES = limit
            data = input_pipeline.make_dataset(ds, 128, shuffle=True, seed=0)
            t = time.perf_counter()
            n = sum(len(x) for x, _ in data)
            print(
                f"input pipeline, {name}: {n / (time.perf_counter() - t):,.0f} img/s ({n} images, "
                "one shuffled epoch)"
            )


if __name__ == "__main__":
    main()
