"""Sharded image storage (bloodcell/data/shards.py) and the dataset artifact written with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bloodcell.data import shards


def test_shards_hold_the_images_in_order_whatever_batches_they_come_in(sample_dataset, tmp_path):
    images = sample_dataset.images  # 400 real cells
    whole = shards.write_shards(str(tmp_path / "a"), images, per_shard=150)
    assert [s.count for s in whole] == [150, 150, 100]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "images-00000.npy",
        "images-00001.npy",
        "images-00002.npy",
    ]
    uneven = (
        images[a:b] for a, b in ((0, 7), (7, 260), (260, 261), (261, 400))
    )  # a stream of batches
    streamed = shards.write_shards(str(tmp_path / "b"), uneven, per_shard=150)
    assert streamed == whole  # the same files, byte for byte
    assert np.array_equal(
        np.concatenate([shards.read_shard(str(tmp_path / "b"), s) for s in streamed]), images
    )
    assert [len(shards.read_shard(str(tmp_path / "a"), s)) for s in whole] == [150, 150, 100]


def test_a_shard_is_about_64_mib_whatever_the_image_size():
    assert shards.images_per_shard((96, 96, 3)) == 2427
    assert shards.images_per_shard((256, 256, 3)) == 341
    assert shards.images_per_shard((8192, 8192, 3)) == 1  # never none


def test_a_changed_shard_is_refused_by_name(sample_dataset, tmp_path):
    written = shards.write_shards(str(tmp_path), sample_dataset.images[:20], per_shard=10)
    path = tmp_path / written[1].file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one pixel of the last image
    path.write_bytes(bytes(data))
    assert np.array_equal(shards.read_shard(str(tmp_path), written[0]), sample_dataset.images[:10])
    with pytest.raises(ValueError, match=r"images-00001\.npy is corrupt"):
        [shards.read_shard(str(tmp_path), s) for s in written]


def test_non_image_arrays_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        shards.write_shards(str(tmp_path), np.zeros((2, 8, 8, 3), np.float32))


@pytest.fixture
def store_dir():
    """A fresh folder inside the active (local) artifact store, where materializers may write."""
    import uuid

    from zenml.client import Client

    folder = Path(Client().active_stack.artifact_store.path) / "test_shards" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder)


def test_the_dataset_artifact_round_trips_through_shards_and_checks_them(sample_dataset, store_dir):
    from materializers.dataset_materializer import DatasetMaterializer

    uri = store_dir / "artifact"
    uri.mkdir()
    DatasetMaterializer(str(uri)).save(sample_dataset)
    meta = json.loads((uri / "meta.json").read_text())
    assert meta["image_shape"] == [96, 96, 3] and [s["count"] for s in meta["shards"]] == [400]
    assert not (uri / "images.npy").exists()
    back = DatasetMaterializer(str(uri)).load(type(sample_dataset))
    assert back.fingerprint == sample_dataset.fingerprint and back.ids == sample_dataset.ids

    empty = sample_dataset.subset(
        []
    )  # an empty set (no external images, say) keeps its image shape
    (store_dir / "empty").mkdir()
    DatasetMaterializer(str(store_dir / "empty")).save(empty)
    assert DatasetMaterializer(str(store_dir / "empty")).load(type(empty)).images.shape == (
        0,
        96,
        96,
        3,
    )

    shard = uri / meta["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    lazy = DatasetMaterializer(str(uri)).load(type(sample_dataset))  # reads no pixels yet
    with pytest.raises(ValueError, match="images-00000.npy is corrupt"):
        lazy.images[0]
    (uri / "hashes.npy").write_bytes((uri / "hashes.npy").read_bytes()[:-1] + b"\x00")
    with pytest.raises(
        ValueError, match="is corrupt: its content no longer matches its fingerprint"
    ):
        DatasetMaterializer(str(uri)).load(type(sample_dataset))


def test_a_subset_of_a_loaded_artifact_is_saved_over_its_shards_without_copying_pixels(
    sample_dataset, store_dir
):
    """What split and filter_outliers do: their outputs reference the input's shards; what
    rebalance does: only the images it made are written."""
    from bloodcell.data.sharded_images import ShardedImages
    from materializers.dataset_materializer import DatasetMaterializer

    first, second, third = (store_dir / name for name in ("ingest", "split", "rebalance"))
    for d in (first, second, third):
        d.mkdir()
    DatasetMaterializer(str(first)).save(sample_dataset)
    loaded = DatasetMaterializer(str(first)).load(type(sample_dataset))
    assert (
        isinstance(loaded.images, ShardedImages)
        and loaded.fingerprint == sample_dataset.fingerprint
    )

    rows = np.random.default_rng(0).permutation(400)[:120]
    part = loaded.subset(rows)
    DatasetMaterializer(str(second)).save(part)
    assert not list(second.glob("images-*.npy"))  # a manifest over the ingest artifact's shard
    back = DatasetMaterializer(str(second)).load(type(part))
    assert back.fingerprint == sample_dataset.subset(rows).fingerprint
    assert np.array_equal(np.asarray(back.images), sample_dataset.images[rows])

    made = (255 - sample_dataset.images[:30]).astype(np.uint8)  # images a step made in memory
    grown = type(part)(
        back.concat_images(made),
        np.concatenate([back.labels, back.labels[:30]]),
        back.ids + [f"{i}#aug1" for i in back.ids[:30]],
        back.class_names,
    )
    DatasetMaterializer(str(third)).save(grown)
    assert [p.name for p in third.glob("images-*.npy")] == ["images-00000.npy"]
    assert len(np.load(third / "images-00000.npy")) == 30  # only the new images
    again = DatasetMaterializer(str(third)).load(type(grown))
    assert again.fingerprint == grown.fingerprint
    assert np.array_equal(
        np.asarray(again.images), np.concatenate([sample_dataset.images[rows], made])
    )


def test_dataset_artifacts_written_before_shards_still_load(sample_dataset, store_dir):
    """One images.npy and no shard list: the layout of artifacts in existing stores."""
    import hashlib

    from materializers.dataset_materializer import DatasetMaterializer

    uri, ds = store_dir, sample_dataset
    old = hashlib.sha256(
        repr((ds.images.shape, list(ds.class_names))).encode()
    )  # the fingerprint of then
    for part in (
        ds.images.tobytes(),
        ds.labels.astype("<i8").tobytes(),
        "\n".join(ds.ids).encode(),
    ):
        old.update(part)
    np.save(uri / "images.npy", ds.images, allow_pickle=False)
    np.save(uri / "labels.npy", ds.labels, allow_pickle=False)
    meta = {
        "ids": ds.ids,
        "class_names": ds.class_names,
        "info": ds.info,
        "fingerprint": old.hexdigest(),
    }
    (uri / "meta.json").write_text(json.dumps(meta))
    back = DatasetMaterializer(str(uri)).load(type(ds))
    assert back.fingerprint == ds.fingerprint and np.array_equal(back.images, ds.images)
    (uri / "meta.json").write_text(json.dumps({**meta, "ids": ds.ids[::-1]}))
    with pytest.raises(ValueError, match="is corrupt"):
        DatasetMaterializer(str(uri)).load(type(ds))


def test_sharded_images_index_like_an_array_and_read_only_what_is_asked(sample_dataset, tmp_path):
    from bloodcell.data.sharded_images import ShardedImages

    images = sample_dataset.images
    written = shards.write_shards(str(tmp_path), images, per_shard=64)
    lazy = ShardedImages([(str(tmp_path), s) for s in written], (96, 96, 3))
    assert lazy.shape == images.shape and len(lazy) == 400 and lazy.dtype == np.uint8
    mask = sample_dataset.labels == 3
    for key in (5, -1, slice(10, 200, 7), [399, 0, 64, 63], mask):
        assert np.array_equal(lazy[key], images[key]), key
    assert np.array_equal(np.concatenate(list(lazy.batches(100))), images)
    assert lazy.astype(np.float32).dtype == np.float32 and np.array_equal(
        lazy.astype(np.float32), images
    )
    sub = lazy.subset([300, 2, 2])
    assert np.array_equal(np.asarray(sub), images[[300, 2, 2]])
    with pytest.raises(ValueError, match="out of range"):
        ShardedImages(lazy.parts, (96, 96, 3), np.array([400]))
    # a shard that is never asked for is never read: break one and read around it
    (tmp_path / written[2].file).write_bytes(b"broken")
    assert np.array_equal(lazy[[0, 70, 399]], images[[0, 70, 399]])
    with pytest.raises(ValueError, match="images-00002.npy is corrupt"):
        lazy[130]


def test_a_preview_reads_at_most_a_shard_a_class(sample_dataset, tmp_path):
    """The dashboard's sample grid of a sharded set: every class, about as many of each, from at
    most one shard a class, whether the shards follow the classes (ingest) or mix them (a split)."""
    from bloodcell.data.dataset import Dataset
    from bloodcell.data.sharded_images import ShardedImages

    written = shards.write_shards(str(tmp_path), sample_dataset.images, per_shard=20)  # 20 shards
    lazy = ShardedImages([(str(tmp_path), s) for s in written], (96, 96, 3))
    whole = Dataset(
        images=lazy,
        labels=sample_dataset.labels,
        ids=sample_dataset.ids,
        class_names=sample_dataset.class_names,
    )
    mixed = whole.subset(np.random.default_rng(1).permutation(400)[:300])
    for ds in (whole, mixed):
        view = ds.preview(80, seed=0)
        parts = set(view.images.part_of_rows().tolist())
        assert len(parts) <= 8 and len(parts) < len(set(ds.images.part_of_rows().tolist()))
        assert sorted(set(view.labels.tolist())) == list(range(8))
        assert 40 <= len(view) <= 80 and max(np.bincount(view.labels)) <= 10
        assert np.array_equal(
            np.asarray(view.images),
            sample_dataset.images[[sample_dataset.ids.index(i) for i in view.ids]],
        )
    assert len(sample_dataset.preview(80)) == 80  # in memory: a plain sample


def test_ingest_streams_a_folder_into_shards_and_a_bad_file_leaves_none(
    small_tree, sample_dir, tmp_path
):
    from bloodcell.data.ingest import IngestError, read_source
    from bloodcell.data.sharded_images import ShardedImages

    in_memory = read_source(small_tree)
    sink = tmp_path / "artifact"
    streamed = read_source(small_tree, sink=str(sink))
    assert isinstance(streamed.images, ShardedImages) and [p.name for p in sink.iterdir()] == [
        "source-00000.npy"
    ]
    assert streamed.fingerprint == in_memory.fingerprint and np.array_equal(
        np.asarray(streamed.images), in_memory.images
    )

    # at 512 px a shard holds 85 images: the bad file, in the last class, comes after 4 shards were
    # written
    tree = tmp_path / "sample_copy"
    shutil.copytree(sample_dir, tree)
    victim = sorted((tree / "platelet").iterdir())[10]
    victim.write_bytes(victim.read_bytes()[:300])
    bad_sink = tmp_path / "failed"
    with pytest.raises(IngestError, match=f"{victim.name}: unreadable or truncated image"):
        read_source(tree, image_size=512, sink=str(bad_sink))
    assert bad_sink.is_dir() and not any(
        bad_sink.iterdir()
    )  # the shards written before it are gone


def test_image_hashes_are_the_sha1_of_the_pixels_even_when_one_ends_in_a_zero_byte():
    import hashlib

    from bloodcell.data.dataset import Dataset

    images = np.zeros((300, 2, 2, 3), np.uint8)
    images.reshape(300, -1)[:, 0] = np.arange(300) % 256
    images.reshape(300, -1)[:, 1] = np.arange(300) // 256
    ds = Dataset(images, np.zeros(300), [str(i) for i in range(300)])
    want = [hashlib.sha1(img.tobytes()).hexdigest() for img in images]
    assert any(w.endswith("00") for w in want)  # 300 hashes: at least one ends in a zero byte
    assert ds.image_hashes() == want
