"""Chunks of a folder source (the fan-out path): stable, local to the files that change, read
with the chunk named in errors, and merged and scored into exactly what the single path gives."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_outliers import inject, natural_photos, synthetic_outliers

import bloodcell.data.outliers as outliers
from bloodcell.data.chunks import MAX_CHUNK, FanOut, merge_chunks, plan_chunks, read_chunk
from bloodcell.data.dataset import Dataset
from bloodcell.data.features import image_features
from bloodcell.data.images import IngestError
from bloodcell.data.ingest import read_folder
from bloodcell.data.outliers import OutlierConfig, filter_outliers

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def source(tmp_path) -> Path:
    return Path(shutil.copytree(SAMPLE, tmp_path / "sample"))


def chunks_of(source: Path, chunk_size: int = 20) -> dict[str, tuple]:
    return {c.name: (c.files, c.digest) for c in plan_chunks(str(source), chunk_size).chunks}


def read_all(source: Path, chunk_size: int = 20) -> list[Dataset]:
    return [read_chunk(spec) for spec in plan_chunks(str(source), chunk_size).specs(96, chunk_size)]


def test_chunks_cover_the_source_once_in_order_and_are_stable(source):
    plan = plan_chunks(str(source), 20)
    files = [f for c in plan.chunks for f in c.files]
    assert files == read_folder(source).ids  # every file once, in the single path's order
    assert all(len({Path(f).parent for f in c.files}) == 1 for c in plan.chunks)  # one class each
    sizes = [len(c.files) for c in plan.chunks]
    assert max(sizes) <= MAX_CHUNK * 20 and 8 <= len(sizes) <= 60, sizes
    assert chunks_of(source) == chunks_of(source)  # the same source gives the same chunks
    with pytest.raises(ValueError, match="parameters.fan_out.chunk_size"):
        FanOut.from_dict({"chunk_size": 0})


def test_new_and_edited_files_change_only_their_chunks(source):
    before = chunks_of(source)
    # four new images (1% of the sample): three named as a scanner numbers them, after the old
    # ones, and one that sorts between the first two neutrophils (a count-based cut would move
    # every later neutrophil chunk)
    for k, folder in enumerate(["eosinophil", "eosinophil", "platelet"]):
        old = sorted((source / folder).iterdir())[k]
        shutil.copy(old, source / folder / f"ZZ_new_{k}.jpg")
    first = sorted((source / "neutrophil").iterdir())[0]
    shutil.copy(first, first.with_name(first.stem + "_b.jpg"))
    after = chunks_of(source)
    changed = {n for n in after if after[n] != before.get(n)}
    assert {n.split("/")[0] for n in changed} == {"eosinophil", "neutrophil", "platelet"}
    assert len(changed) <= 4, changed  # a new file may begin a chunk of its own: still local
    assert sum(n.startswith("neutrophil/") for n in before) >= 3

    # an edited file (new size and time) changes its chunk's digest, and no other
    victim = sorted((source / "monocyte").iterdir())[5]
    victim.write_bytes(victim.read_bytes() + b"\0")
    os.utime(victim, ns=(1, 1))
    edited = chunks_of(source)
    differ = [n for n in edited if edited[n] != after[n]]
    assert len(differ) == 1 and f"monocyte/{victim.name}" in edited[differ[0]][0]


def test_a_later_batch_of_images_makes_chunks_of_its_own(source):
    # a week's new images, named after the old ones: every old chunk stays as it was (cached)
    before = chunks_of(source, chunk_size=4)
    last = {n.split("/")[0]: len(files) for n, (files, _) in before.items()}  # dicts keep order
    folders = [f for f in ("eosinophil", "monocyte", "platelet") if last[f] >= 2]
    assert folders
    week_later = max(p.stat().st_mtime for p in source.rglob("*.jpg")) + 7 * 24 * 3600
    for folder in folders:
        for k in range(3):
            new = source / folder / f"ZZ_new_{k}.jpg"
            shutil.copy(sorted((source / folder).iterdir())[k], new)
            os.utime(new, (week_later, week_later))
    after = chunks_of(source, chunk_size=4)
    assert all(after[n] == before[n] for n in before)
    added = [f for n in set(after) - set(before) for f in after[n][0]]
    assert sorted(added) == sorted(f"{f}/ZZ_new_{k}.jpg" for f in folders for k in range(3))


def test_a_bad_image_names_the_chunk_the_file_and_the_rule(source, tmp_path):
    victim = sorted((source / "lymphocyte").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:300])
    plan = plan_chunks(str(source), 20)
    spec = next(
        s for s, c in zip(plan.specs(96, 20), plan.chunks) if f"lymphocyte/{victim.name}" in c.files
    )
    sink = tmp_path / "artifact"
    with pytest.raises(IngestError) as err:
        read_chunk(spec, sink=str(sink))
    message = str(err.value)
    assert f"chunk lymphocyte/{spec['first']}" in message
    assert f"{victim.name}: unreadable or truncated image" in message
    assert "rule:" in message
    assert not list(sink.glob("*.npy"))  # no half-written shard

    # the source changing between planning and reading is named too
    victim.write_bytes(b"")
    with pytest.raises(IngestError, match="changed after the run listed them"):
        read_chunk(spec)


def test_merged_chunks_and_their_features_give_the_single_path_exactly(source):
    single = read_folder(source)
    parts = read_all(source)
    merged, _ = merge_chunks(parts, dict(single.info))
    assert merged.fingerprint == single.fingerprint
    assert merged.ids == single.ids

    cfg = OutlierConfig(n_components=16)
    features = [image_features(p.images, p.ids, cfg.thumb) for p in parts]
    a = filter_outliers(single, cfg)
    b = filter_outliers(merged, cfg, features=features[::-1])  # any order of the chunks
    assert a.table.equals(b.table)  # every score, bit for bit
    assert a.kept.fingerprint == b.kept.fingerprint


def test_scoring_by_chunk_flags_what_the_single_path_flags_past_the_pca_sample(source, monkeypatch):
    # past PCA_FIT_SAMPLES the PCA is fit on a sample and the rest scored a chunk at a time
    monkeypatch.setattr(outliers, "PCA_FIT_SAMPLES", 150)
    ds, bad = inject(
        read_folder(source), {**synthetic_outliers(np.random.default_rng(0)), **natural_photos()}
    )
    cfg = OutlierConfig(n_components=16)
    cut = np.array_split(np.random.default_rng(1).permutation(len(ds)), 7)
    features = [
        image_features(ds.images[rows], [ds.ids[i] for i in rows], cfg.thumb) for rows in cut
    ]
    a = filter_outliers(ds, cfg)
    b = filter_outliers(ds, cfg, features=features)
    assert set(bad) <= set(b.table[b.table.flagged].id)
    assert a.kept.fingerprint == b.kept.fingerprint
    np.testing.assert_allclose(a.table.score, b.table.score, rtol=1e-6)

    with pytest.raises(ValueError, match="rule: the chunks are scored at the filter's thumbnail"):
        filter_outliers(ds, OutlierConfig(n_components=16, thumb=16), features=features)
    with pytest.raises(ValueError, match="rule: one row of features for each sample"):
        filter_outliers(ds, cfg, features=features[1:])
