"""Shard formats for the dataset artifact: write, sequential read and random-access speed, and bytes
per image, of .npy shards, TFRecord (raw pixels or PNG) and ArrayRecord (if installed).

    .venv/bin/python benchmarks/shard_formats.py [--images 8192] [--size 96] [--shard-images 2048]

The images are pbc96's (the shipped sample if it is missing), resized to ``--size`` and repeated up
to ``--images``. Each format writes them in shards of ``--shard-images``, then is read back:
sequentially into batches of 128 (through tf.data where the format has a reader there), and at 1,000
random indices (sorted, the way a split's manifest reads them). Times are wall seconds on this
machine; the folder is a fresh temporary one (page cache warm, as a step reading what the previous
step wrote). ArrayRecord is not a dependency of the project: `.venv/bin/pip install array-record`
to include it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BATCH = 128


def _images(n: int, size: int) -> np.ndarray:
    from bloodcell.data.ingest import read_source

    source = ROOT.parent / "shared" / "data" / "pbc96"
    data = read_source(source if source.exists() else ROOT / "data" / "sample", image_size=size)
    reps = -(-n // len(data))
    return np.concatenate([data.images] * reps)[:n]


def _npy(images: np.ndarray, folder: Path, per: int) -> dict:
    t = time.perf_counter()
    for s in range(0, len(images), per):
        with open(folder / f"{s // per:05d}.npy", "wb") as f:
            np.save(f, images[s : s + per], allow_pickle=False)
    write = time.perf_counter() - t
    files = sorted(folder.glob("*.npy"))
    t = time.perf_counter()
    n = 0
    for path in files:
        shard = np.load(path, allow_pickle=False)
        for b in range(0, len(shard), BATCH):
            n += len(shard[b : b + BATCH])
    read = time.perf_counter() - t
    index = np.sort(np.random.default_rng(0).choice(len(images), 1000, replace=False))
    t = time.perf_counter()
    maps = [np.load(p, mmap_mode="r", allow_pickle=False) for p in files]
    picked = np.stack([maps[i // per][i % per] for i in index])
    rand = time.perf_counter() - t
    assert n == len(images) and np.array_equal(picked, images[index])
    return {"write": write, "read": read, "random": rand, "files": files}


def _tfrecord(images: np.ndarray, folder: Path, per: int, png: bool) -> dict:
    import tensorflow as tf

    def feature(img: np.ndarray) -> bytes:
        data = tf.io.encode_png(img).numpy() if png else img.tobytes()
        return tf.train.Example(
            features=tf.train.Features(
                feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
            )
        ).SerializeToString()

    t = time.perf_counter()
    for s in range(0, len(images), per):
        with tf.io.TFRecordWriter(str(folder / f"{s // per:05d}.tfrecord")) as w:
            for img in images[s : s + per]:
                w.write(feature(img))
    write = time.perf_counter() - t
    files = sorted(folder.glob("*.tfrecord"))
    shape = images.shape[1:]

    def parse(rec):
        raw = tf.io.parse_single_example(rec, {"image": tf.io.FixedLenFeature([], tf.string)})[
            "image"
        ]
        img = tf.io.decode_png(raw, channels=3) if png else tf.io.decode_raw(raw, tf.uint8)
        return tf.reshape(img, shape)

    t = time.perf_counter()
    ds = (
        tf.data.TFRecordDataset([str(f) for f in files])
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH)
    )
    n = sum(len(b) for b in ds.as_numpy_iterator())
    read = time.perf_counter() - t
    assert n == len(images)
    return {"write": write, "read": read, "random": None, "files": files}


def _array_record(images: np.ndarray, folder: Path, per: int) -> dict | None:
    try:
        from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
    except ImportError:
        return None
    t = time.perf_counter()
    for s in range(0, len(images), per):
        w = ArrayRecordWriter(str(folder / f"{s // per:05d}.array_record"), "group_size:1")
        for img in images[s : s + per]:
            w.write(img.tobytes())
        w.close()
    write = time.perf_counter() - t
    files = sorted(folder.glob("*.array_record"))
    shape = images.shape[1:]
    t = time.perf_counter()
    n = 0
    for path in files:
        r = ArrayRecordReader(str(path))
        for b in range(0, r.num_records(), BATCH):
            recs = r.read(list(range(b, min(b + BATCH, r.num_records()))))
            n += len(np.stack([np.frombuffer(x, np.uint8).reshape(shape) for x in recs]))
        r.close()
    read = time.perf_counter() - t
    index = np.sort(np.random.default_rng(0).choice(len(images), 1000, replace=False))
    t = time.perf_counter()
    readers = [ArrayRecordReader(str(p)) for p in files]
    picked = np.stack(
        [
            np.frombuffer(readers[i // per].read([int(i % per)])[0], np.uint8).reshape(shape)
            for i in index
        ]
    )
    rand = time.perf_counter() - t
    assert n == len(images) and np.array_equal(picked, images[index])
    return {"write": write, "read": read, "random": rand, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--shard-images", type=int, default=2048)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    images = _images(args.images, args.size)
    n, per = len(images), args.shard_images
    print(
        f"{n} images of {args.size}x{args.size} px ({images[0].nbytes / 1024:.1f} KiB raw each), "
        f"shards of {per}, {os.cpu_count()} cores"
    )
    print("| format | write img/s | sequential read img/s | random read img/s | KiB per image |")
    print("|---|---|---|---|---|")
    formats = {
        "npy shards": lambda d: _npy(images, d, per),
        "TFRecord, raw pixels": lambda d: _tfrecord(images, d, per, png=False),
        "TFRecord, PNG": lambda d: _tfrecord(images, d, per, png=True),
        "ArrayRecord, raw pixels": lambda d: _array_record(images, d, per),
    }
    for name, run in formats.items():
        with tempfile.TemporaryDirectory() as tmp:
            r = run(Path(tmp))
            if r is None:
                print(f"| {name} | (array_record not installed) | | | |")
                continue
            size = sum(f.stat().st_size for f in r["files"]) / n / 1024
            rand = f"{1000 / r['random']:,.0f}" if r["random"] else "no index"
            print(
                f"| {name} | {n / r['write']:,.0f} | {n / r['read']:,.0f} | {rand} | {size:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
