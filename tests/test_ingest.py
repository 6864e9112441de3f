"""Ingest on real sample images and on realistic bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodcell import CLASS_NAMES
from bloodcell.data.ingest import IngestError, read_source


def test_reads_the_shipped_sample(sample_dataset):
    ds = sample_dataset
    assert ds.images.shape == (400, 96, 96, 3) and ds.images.dtype == np.uint8
    assert ds.class_counts() == dict.fromkeys(CLASS_NAMES, 50)
    assert len(set(ds.ids)) == 400
    # ids trace to the file, labels follow the alphabetical folder order
    i = ds.ids.index(next(s for s in ds.ids if s.startswith("monocyte/")))
    assert ds.labels[i] == CLASS_NAMES.index("monocyte")
    assert (Path(ds.info["source"]) / ds.ids[i]).is_file()
    assert ds.info["conversions"] == {}


def test_fingerprint_changes_with_one_pixel(small_tree):
    a = read_source(small_tree)
    assert read_source(small_tree).fingerprint == a.fingerprint
    f = next((small_tree / "platelet").iterdir())
    img = np.asarray(Image.open(f)).copy()
    img[10:20, 10:20] = 0
    Image.fromarray(img).save(f, quality=95)
    assert read_source(small_tree).fingerprint != a.fingerprint


def test_converts_grayscale_rgba_16bit_and_resizes(small_tree):
    src = next((small_tree / "basophil").iterdir())
    rgb = Image.open(src).convert("RGB")
    rgb.convert("L").save(small_tree / "basophil" / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(small_tree / "basophil" / "alpha.png")
    arr16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(arr16).save(small_tree / "basophil" / "deep.png")
    rgb.resize((200, 150)).save(small_tree / "basophil" / "big.jpg")
    ds = read_source(small_tree)
    conv = ds.info["conversions"]
    assert conv["grayscale_to_rgb"] == 2  # the 8-bit gray and the 16-bit one
    assert conv["alpha_removed"] == 1
    assert conv["16bit_to_8bit"] == 1
    assert conv["resized"] == 1
    gray = ds.images[ds.ids.index("basophil/gray.png")]
    assert np.array_equal(gray[..., 0], gray[..., 2])
    deep = ds.images[ds.ids.index("basophil/deep.png")]
    assert np.abs(deep[..., 0].astype(int) - gray[..., 0]).max() <= 1


@pytest.mark.parametrize("labels_shape", ["flat", "column"])
def test_challenge_npz(tmp_path, sample_dataset, labels_shape):
    labels = sample_dataset.labels if labels_shape == "flat" else sample_dataset.labels[:, None]
    path = tmp_path / "training_set.npz"
    np.savez(path, images=sample_dataset.images, labels=labels.astype(np.uint8))
    ds = read_source(path)
    assert np.array_equal(ds.images, sample_dataset.images)
    assert np.array_equal(ds.labels, sample_dataset.labels)
    assert ds.ids[7] == "training_set.npz:7"


def test_medmnist_npz_is_merged(tmp_path, sample_dataset):
    x, y = sample_dataset.images, sample_dataset.labels[:, None]
    path = tmp_path / "bloodmnist_96.npz"
    np.savez(
        path,
        train_images=x[:300],
        train_labels=y[:300],
        val_images=x[300:350],
        val_labels=y[300:350],
        test_images=x[350:],
        test_labels=y[350:],
    )
    ds = read_source(path)
    assert len(ds) == 400 and ds.info["format"] == "medmnist_npz"
    assert ds.ids[0] == "bloodmnist_96.npz:train:0" and ds.ids[-1] == "bloodmnist_96.npz:test:49"
    assert np.array_equal(ds.labels, sample_dataset.labels)


def test_smaller_npz_images_are_resized(tmp_path, sample_dataset):
    small = np.stack(
        [np.asarray(Image.fromarray(a).resize((28, 28))) for a in sample_dataset.images[:16]]
    )
    path = tmp_path / "small.npz"
    np.savez(path, images=small, labels=sample_dataset.labels[:16])
    ds = read_source(path)
    assert ds.images.shape == (16, 96, 96, 3)
    assert ds.info["conversions"]["resized"] == 16


def test_npz_is_read_in_chunks_into_shards(tmp_path, sample_dataset, monkeypatch):
    """With a sink (the ingest step's artifact folder) an .npz goes into shards a chunk at a time,
    as a folder does. Float pixels are scaled by the whole array's range, not a chunk's: here the
    first chunk is all dark (at most 1.0) in a 0..255 array, and stays dark."""
    import bloodcell.data.npz
    from bloodcell.data.dataset import Dataset
    from bloodcell.data.ingest import read_unlabeled
    from bloodcell.data.sharded_images import ShardedImages

    monkeypatch.setattr(bloodcell.data.npz, "NPZ_ROWS", 64)
    x = sample_dataset.images.astype(np.float32)
    x[:64] = np.minimum(x[:64], 1.0)
    path = tmp_path / "float.npz"
    np.savez_compressed(
        path,
        train_images=x[:300],
        train_labels=sample_dataset.labels[:300],
        test_images=x[300:],
        test_labels=sample_dataset.labels[300:],
    )
    ds = read_source(path, sink=str(tmp_path / "shards"))
    assert isinstance(ds.images, ShardedImages) and list((tmp_path / "shards").iterdir())
    assert np.array_equal(np.asarray(ds.images), np.round(x).astype(np.uint8))
    assert (
        ds.images[:64].max() == 1
        and ds.fingerprint
        == Dataset(
            images=np.round(x).astype(np.uint8),
            labels=ds.labels,
            ids=ds.ids,
            class_names=ds.class_names,
        ).fingerprint
    )
    assert ds.ids[300] == "float.npz:test:0" and np.array_equal(ds.labels, sample_dataset.labels)
    unlabeled = read_unlabeled(path, sink=str(tmp_path / "unlabeled"))
    assert isinstance(unlabeled.images, ShardedImages) and len(unlabeled) == 400
    assert np.array_equal(np.asarray(unlabeled.images), np.asarray(ds.images))


# ---- bad input: a clear error that names the file/row and the rule ----


def test_truncated_jpeg(small_tree):
    f = next((small_tree / "eosinophil").iterdir())
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match=rf"{f.name}.*truncated"):
        read_source(small_tree)


def test_non_image_file(small_tree):
    (small_tree / "ig" / "notes.txt").write_text("not a picture")
    with pytest.raises(IngestError, match=r"notes\.txt: not an image"):
        read_source(small_tree)


def test_missing_path(tmp_path):
    with pytest.raises(IngestError, match=r"nowhere: no such file or folder"):
        read_source(tmp_path / "nowhere")


def test_empty_class_folder(small_tree):
    for f in (small_tree / "lymphocyte").iterdir():
        f.unlink()
    with pytest.raises(IngestError, match=r"lymphocyte: empty class folder"):
        read_source(small_tree)


def test_classes_come_from_the_folders(small_tree):
    """A folder source defines its classes: the sub-folder names, sorted. Five white-cell classes
    are a 5-class dataset; an extra folder is one more class."""
    import shutil

    for name in ("erythroblast", "ig", "platelet"):
        shutil.rmtree(small_tree / name)
    ds = read_source(small_tree)
    assert ds.class_names == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert ds.class_counts() == dict.fromkeys(ds.class_names, 3)
    assert ds.labels[ds.ids.index(next(i for i in ds.ids if i.startswith("monocyte/")))] == 3
    shutil.copytree(small_tree / "monocyte", small_tree / "macrophage")
    assert read_source(small_tree).class_names[3] == "macrophage"


def test_named_classes_fix_the_order_and_the_folders_must_match(small_tree):
    names = list(reversed(CLASS_NAMES))
    ds = read_source(small_tree, classes=names)
    assert (
        ds.class_names == names
        and ds.labels[ds.ids.index(next(i for i in ds.ids if i.startswith("platelet/")))] == 0
    )
    (small_tree / "macrophage").mkdir()
    (small_tree / "macrophage" / "m.jpg").write_bytes(
        (small_tree / "ig" / sorted(os.listdir(small_tree / "ig"))[0]).read_bytes()
    )
    for f in (small_tree / "platelet").iterdir():
        f.unlink()
    (small_tree / "platelet").rmdir()
    with pytest.raises(
        IngestError,
        match=r"cells: the class folders .* do not match classes .*: missing \['platelet'\], "
        r"unexpected \['macrophage'\] \(rule: with classes: given",
    ):
        read_source(small_tree, classes=CLASS_NAMES)


def test_class_map_renames_and_merges_folders(small_tree):
    (small_tree / "neutrophil").rename(small_tree / "segmented_neutrophil")
    (small_tree / "ig").rename(small_tree / "band_neutrophil")
    ds = read_source(
        small_tree,
        class_map={"segmented_neutrophil": "neutrophil", "band_neutrophil": "neutrophil"},
    )
    assert (
        "neutrophil" in ds.class_names and "ig" not in ds.class_names and len(ds.class_names) == 7
    )
    assert (
        ds.class_counts()["neutrophil"] == 6
        and ds.info["class_map"]["band_neutrophil"] == "neutrophil"
    )
    with pytest.raises(
        IngestError, match=r"class_map names folder \['eosinophils'\] that the source does not have"
    ):
        read_source(small_tree, class_map={"eosinophils": "eosinophil"})


def test_fewer_than_two_classes_and_bad_sizes_are_clear_errors(small_tree, tmp_path):
    with pytest.raises(IngestError, match=r"1 class\(es\) \['cell'\] \(rule: at least 2 classes\)"):
        read_source(small_tree, class_map=dict.fromkeys(CLASS_NAMES, "cell"))
    for size in (16, 600):
        with pytest.raises(
            IngestError, match=rf"image_size {size} \(rule: an integer from 32 to 512 pixels\)"
        ):
            read_source(small_tree, image_size=size)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_any_image_size(small_tree, size):
    ds = read_source(small_tree, image_size=size)
    assert ds.images.shape == (24, size, size, 3) and ds.info["conversions"]["resized"] == 24


def test_npz_with_its_own_classes(tmp_path, sample_dataset):
    """An npz has no class names: `classes` names its labels (PBC's 8 by default), and labels must
    index them."""
    keep = np.flatnonzero(sample_dataset.labels < 3)
    path = tmp_path / "three.npz"
    np.savez(path, images=sample_dataset.images[keep], labels=sample_dataset.labels[keep])
    ds = read_source(path, classes=["baso", "eos", "ery"])
    assert ds.class_names == ["baso", "eos", "ery"] and ds.class_counts() == {
        "baso": 50,
        "eos": 50,
        "ery": 50,
    }
    assert read_source(path).class_names == list(CLASS_NAMES)
    with pytest.raises(
        IngestError,
        match=r"three\.npz:labels row 100: label 2 \(rule: labels are integers in 0\.\.1\)",
    ):
        read_source(path, classes=["baso", "eos"])
    merged = read_source(
        path,
        classes=["baso", "eos", "ery"],
        class_map={"baso": "granulocyte", "eos": "granulocyte"},
    )
    assert merged.class_names == ["ery", "granulocyte"] and merged.class_counts() == {
        "ery": 50,
        "granulocyte": 100,
    }


def test_npz_wrong_keys(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, pictures=np.zeros((2, 96, 96, 3), np.uint8), y=np.zeros(2))
    with pytest.raises(IngestError, match=r"x\.npz: keys \['pictures', 'y'\]"):
        read_source(path)


def test_npz_wrong_shape(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((2, 96, 96, 2), np.uint8), labels=np.zeros(2, np.int64))
    with pytest.raises(IngestError, match=r"x\.npz:images: images have shape \(2, 96, 96, 2\)"):
        read_source(path)


def test_npz_label_count_mismatch(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((3, 96, 96, 3), np.uint8), labels=np.zeros(2, np.int64))
    with pytest.raises(IngestError, match=r"2 labels for 3 images"):
        read_source(path)


def test_npz_label_out_of_range_names_the_row(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((4, 96, 96, 3), np.uint8), labels=np.array([0, 7, 8, 1]))
    with pytest.raises(
        IngestError, match=r"x\.npz:labels row 2: label 8 \(rule: labels are integers in 0\.\.7\)"
    ):
        read_source(path)


def test_npz_nan_pixel_names_the_row(tmp_path, monkeypatch):
    imgs = np.full((3, 96, 96, 3), 0.5, np.float32)
    imgs[1, 5, 5, 0] = np.nan
    path = tmp_path / "x.npz"
    np.savez(path, images=imgs, labels=np.zeros(3, np.int64))
    with pytest.raises(IngestError, match=r"x\.npz:images row 1: NaN"):
        read_source(path)
    imgs = np.full(
        (300, 8, 8, 3), 0.5, np.float32
    )  # in a later chunk, the row counts from the array's start
    imgs[130, 1, 1, 1] = np.inf
    np.savez(path, images=imgs, labels=np.zeros(300, np.int64))
    monkeypatch.setattr("bloodcell.data.npz.NPZ_ROWS", 64)
    with pytest.raises(IngestError, match=r"x\.npz:images row 130: NaN or infinite"):
        read_source(path, sink=str(tmp_path / "shards"))
    assert not list((tmp_path / "shards").glob("*"))  # nothing written: the range check reads first


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.array([object()] * 2, dtype=object), labels=np.zeros(2, np.int64))
    with pytest.raises(IngestError, match=r"no pickled objects"):
        read_source(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"garbage")
    with pytest.raises(IngestError, match=r"x\.npz: cannot be read as an \.npz"):
        read_source(path)


def test_decompression_bomb_names_the_file(small_tree, monkeypatch):
    """An image over PIL's pixel limit stops ingest with PIL's reason and the file's name."""
    from PIL import Image as PILImage

    bomb = small_tree / "neutrophil" / "bomb.png"
    PILImage.new("RGB", (300, 300), (200, 150, 200)).save(bomb)
    monkeypatch.setattr(
        PILImage, "MAX_IMAGE_PIXELS", 300 * 300 // 4
    )  # twice over the limit is an error
    with pytest.raises(
        IngestError,
        match=r"bomb\.png: Image size \(90000 pixels\) exceeds limit .*"
        r"\(rule: an image has at most 22500 pixels\)",
    ):
        read_source(small_tree)
