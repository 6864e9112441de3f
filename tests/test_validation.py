"""The expectation suites in configs/expectations.yaml pass on real data and catch each kind of
breakage; every check reads as a rule naming its threshold."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcell.data import tables
from bloodcell.data.dataset import Dataset
from bloodcell.data.split import stratified_split
from bloodcell.data.stain import stain_params
from bloodcell.data.validation import ExpectationFailed, load_suites, resolve_params, validate

from conftest import ROOT

SUITES = load_suites(ROOT / "configs" / "expectations.yaml")


def failed(step: str, tbls, **params) -> list[str]:
    report = validate(step, tbls, SUITES[step], params)
    return [r.describe() for r in report.failures]


def ingest_failures(ds: Dataset, stain_ranges=None) -> list[str]:
    """The ingest suite on ``ds``, with the parameters the step gives it."""
    return failed(
        "ingest", tables.ingest_tables(ds), **tables.shape_params(ds), **stain_params(stain_ranges)
    )


def test_real_sample_passes_every_data_suite(sample_dataset):
    ds = sample_dataset
    assert ingest_failures(ds) == []
    assert failed("filter_outliers", tables.filter_tables(ds, ds), max_fraction=0.05) == []
    tr, va, te = stratified_split(ds)
    parts = {"train": tr, "val": va, "test": te}
    assert (
        failed("split", tables.split_tables(ds, parts, {"train": 0.8, "val": 0.1, "test": 0.1}))
        == []
    )
    assert failed("rebalance", tables.rebalance_tables(tr, tr, set(va.ids) | set(te.ids))) == []


def _with(ds: Dataset, images=None, labels=None, ids=None) -> Dataset:
    return Dataset(
        images=ds.images.copy() if images is None else images,
        labels=ds.labels.copy() if labels is None else labels,
        ids=list(ds.ids) if ids is None else ids,
    )


def test_ingest_breakages_are_each_caught(sample_dataset):
    ds = sample_dataset
    imgs = ds.images.copy()
    imgs[5] = 200  # a constant image
    assert any("samples.std" in f for f in ingest_failures(_with(ds, images=imgs)))
    labels = ds.labels.copy()
    labels[3] = 8
    assert any(
        "samples.label: observed 1 unexpected" in f and "[8]" in f
        for f in ingest_failures(_with(ds, labels=labels))
    )
    ids = list(ds.ids)
    ids[1] = ids[0]
    assert any(
        "expect_column_values_to_be_unique on samples.id" in f
        for f in ingest_failures(_with(ds, ids=ids))
    )
    green = ds.images.copy()
    green[:10, ..., 0] = 20  # not a stained smear: red channel gone
    assert any("samples.mean_r" in f for f in ingest_failures(_with(ds, images=green)))
    no_platelets = ds.subset(np.flatnonzero(ds.labels != 7))
    assert any("classes.count" in f for f in ingest_failures(no_platelets))
    # an image size other than the step's: the size travels into the suite as a parameter
    assert any(
        "samples.height" in f
        for f in failed(
            "ingest",
            tables.ingest_tables(ds),
            **{**tables.shape_params(ds), "image_size": 128, **stain_params(None)},
        )
    )


def test_a_labs_own_stain_ranges_replace_pbcs(sample_dataset):
    """Yellow-background images (another lab's stain) break PBC's colour ranges; the ranges the lab
    gives (as `bloodcell profile` proposes them from its own images) accept them."""
    from bloodcell.data.stain import profile

    yellow = sample_dataset.images.astype(np.float32)
    yellow[..., 2] *= 0.55  # less blue: a yellow cast
    yellow = _with(sample_dataset, images=yellow.astype(np.uint8))
    assert any("samples.mean_b" in f for f in ingest_failures(yellow))
    assert ingest_failures(yellow, profile(yellow.images)) == []
    assert any(
        "samples.mean_b" in f for f in ingest_failures(sample_dataset, profile(yellow.images))
    )
    with pytest.raises(ValueError, match=r"stain_ranges.mean_g \[200, 100\] \(rule: \[min, max\]"):
        stain_params({"mean_r": [0, 255], "mean_g": [200, 100], "mean_b": [0, 255]})
    with pytest.raises(ValueError, match=r"a range for each of \['mean_r', 'mean_g', 'mean_b'\]"):
        stain_params({"mean_r": [0, 255]})


def test_failure_message_names_step_expectation_observed_and_threshold(sample_dataset):
    imgs = sample_dataset.images.copy()
    imgs[7] = 0
    with pytest.raises(ExpectationFailed) as err:
        ds = _with(sample_dataset, images=imgs)
        params = {**tables.shape_params(ds), **stain_params(None)}
        validate("ingest", tables.ingest_tables(ds), SUITES["ingest"], params).raise_for_failures()
    msg = str(err.value)
    assert "step 'ingest'" in msg
    assert (
        "expect_column_values_to_be_between on samples.std: observed 1 unexpected of 400, "
        "e.g. [0.0], "
        "threshold {'min_value': 2.0} (rule: samples.std >= 2.0)"
    ) in msg
    assert len(err.value.report.failures) >= 1


def test_filter_split_rebalance_breakages(sample_dataset):
    ds = sample_dataset
    kept = ds.subset(np.arange(20, 400))  # 5% removed, all from basophils
    f = failed("filter_outliers", tables.filter_tables(ds, kept), max_fraction=0.04)
    assert any("summary.removed_fraction" in x and "'max_value': 0.04" in x for x in f)
    assert any("classes.removed_fraction" in x for x in f)

    tr, va, te = stratified_split(ds)
    leaky_test = te.subset(np.arange(len(te)))
    leaky_test.ids[0] = tr.ids[0]
    leaky_test.images[1] = tr.images[1]
    f = failed(
        "split",
        tables.split_tables(
            ds,
            {"train": tr, "val": va, "test": leaky_test},
            {"train": 0.8, "val": 0.1, "test": 0.1},
        ),
    )
    assert any("samples.id" in x for x in f) and any(
        "samples.splits_with_this_image" in x for x in f
    )
    f = failed(
        "split",
        tables.split_tables(
            ds, {"train": tr, "val": va, "test": te}, {"train": 0.7, "val": 0.1, "test": 0.2}
        ),
    )
    assert any("sizes.difference_pp" in x for x in f)
    # the class balance is judged in samples, so a small stratified split passes (45 a class: one
    # val image is 2.8 points) and a split that is not stratified fails
    small = ds.subset(np.concatenate([np.flatnonzero(ds.labels == c)[:45] for c in range(8)]))
    tr, va, te = stratified_split(small)
    assert not failed(
        "split",
        tables.split_tables(
            small, {"train": tr, "val": va, "test": te}, {"train": 0.8, "val": 0.1, "test": 0.1}
        ),
    )
    rest = np.setdiff1d(np.arange(len(small)), np.arange(36))
    f = failed(
        "split",
        tables.split_tables(
            small,
            {"train": small.subset(rest), "val": small.subset(np.arange(36)), "test": te},
            {"train": 0.8, "val": 0.1, "test": 0.1},
        ),
    )
    assert any("class_proportions.difference_samples" in x for x in f)

    missing = tr.subset(np.arange(1, len(tr)))
    f = failed("rebalance", tables.rebalance_tables(tr, missing, set(va.ids)))
    assert any("originals.present" in x for x in f)
    f = failed("rebalance", tables.rebalance_tables(tr, tr, {tr.ids[0]}))
    assert any("samples.source_in_val_or_test" in x for x in f)
    unbalanced = tr.subset(np.flatnonzero(tr.labels != 0))
    assert any(
        "classes.ratio_to_largest" in x
        for x in failed("rebalance", tables.rebalance_tables(tr, unbalanced, set()))
    )


def test_training_and_quality_gates():
    good = {
        "loss": [1.0, 0.5],
        "val_loss": [1.1, 0.6],
        "accuracy": [0.5, 0.8],
        "val_accuracy": [0.5, 0.9],
    }
    assert failed("train", tables.history_tables(good), min_val_accuracy=0.85) == []
    nan = {**good, "loss": [1.0, float("nan")]}
    assert any(
        "epochs.loss" in x
        for x in failed("train", tables.history_tables(nan), min_val_accuracy=0.0)
    )
    assert any(
        "summary.best_val_accuracy: observed" in x and "0.95" in x
        for x in failed("train", tables.history_tables(good), min_val_accuracy=0.95)
    )
    metrics = {"plain_accuracy": 0.97, "noisy_accuracy": 0.80}
    assert (
        failed(
            "evaluate",
            tables.metrics_tables(metrics),
            min_plain_accuracy=0.95,
            min_noisy_accuracy=0.8,
        )
        == []
    )
    failures = failed(
        "evaluate", tables.metrics_tables(metrics), min_plain_accuracy=0.9, min_noisy_accuracy=0.9
    )
    assert any("metrics.noisy_accuracy" in x for x in failures)


def test_unknown_param_and_expectation_are_clear_errors():
    with pytest.raises(ValueError, match="refers to parameter 'max_fraction'"):
        validate(
            "filter_outliers", {"summary": None, "classes": None}, SUITES["filter_outliers"], {}
        )
    with pytest.raises(ValueError, match="unknown Great Expectations expectation 'expect_magic'"):
        validate("x", {"t": None}, {"t": [{"expect_magic": {}}]}, {})


def _valid_tables(ds: Dataset) -> dict[str, tuple[dict, dict]]:
    """Tables that pass every suite, and the step parameters the suites refer to."""
    tr, va, te = stratified_split(ds)
    history = {
        "loss": [1.0, 0.5],
        "val_loss": [1.1, 0.6],
        "accuracy": [0.5, 0.8],
        "val_accuracy": [0.5, 0.9],
    }
    return {
        "ingest": (tables.ingest_tables(ds), {**tables.shape_params(ds), **stain_params(None)}),
        "predict_input": (
            tables.unlabeled_tables(
                Dataset(images=ds.images, labels=np.full(len(ds), -1), ids=ds.ids)
            ),
            {"image_size": 96},
        ),
        "ingest_external": (tables.external_tables(ds), tables.shape_params(ds)),
        "filter_outliers": (tables.filter_tables(ds, ds), {"max_fraction": 0.05}),
        "split": (
            tables.split_tables(
                ds, {"train": tr, "val": va, "test": te}, {"train": 0.8, "val": 0.1, "test": 0.1}
            ),
            {},
        ),
        "rebalance": (tables.rebalance_tables(tr, tr, set(va.ids) | set(te.ids)), {}),
        "train": (tables.history_tables(history), {"min_val_accuracy": 0.5}),
        "fine_tune": (tables.metrics_tables({"val_accuracy": 0.9}), {"min_val_accuracy": 0.5}),
        "predict": (
            tables.metrics_tables({"unlike_training_share": 0.1}),
            {"max_unlike_share": 0.5},
        ),
        "evaluate": (
            tables.metrics_tables({"plain_accuracy": 0.9, "noisy_accuracy": 0.9}),
            {"min_plain_accuracy": 0.5, "min_noisy_accuracy": 0.5},
        ),
    }


def _break(df, name: str, kwargs: dict, params: dict):
    """A copy of ``df`` that violates the expectation ``name`` with ``kwargs``."""
    df = df.copy()
    col = kwargs.get("column")
    value = lambda v: resolve_params({"v": v}, params, "test")["v"]  # noqa: E731
    if name == "expect_column_values_to_be_between":
        low, high = value(kwargs.get("min_value")), value(kwargs.get("max_value"))
        df[col] = df[col].astype(float)
        df.loc[0, col] = low - 1 if low is not None else high + 1
    elif name == "expect_column_values_to_be_in_set":
        allowed = kwargs["value_set"]
        df[col] = df[col].astype(object)
        df.loc[0, col] = (not allowed[0]) if isinstance(allowed[0], bool) else "__not_allowed__"
    elif name == "expect_column_values_to_not_be_null":
        df[col] = df[col].astype(object)
        df.loc[0, col] = None
    elif name == "expect_column_values_to_be_unique":
        df.loc[1, col] = df.loc[0, col]
    elif name == "expect_table_row_count_to_equal":
        df = df.drop(index=0)
    else:
        raise AssertionError(f"no way to break {name}: add one here")
    return df


CASES = [
    (step, table, i)
    for step, suite in SUITES.items()
    for table, entries in suite.items()
    for i in range(len(entries))
]


@pytest.mark.parametrize("step,table,index", CASES, ids=[f"{s}-{t}-{i}" for s, t, i in CASES])
def test_every_expectation_in_the_suite_file_stops_its_step(sample_dataset, step, table, index):
    tbls, params = _valid_tables(sample_dataset)[step]
    ((name, kwargs),) = SUITES[step][table][index].items()
    broken = {**tbls, table: _break(tbls[table], name, kwargs, params)}
    with pytest.raises(ExpectationFailed) as err:
        validate(step, broken, SUITES[step], params).raise_for_failures()
    on = f"on {table}.{kwargs['column']}" if "column" in kwargs else f"on {table}:"
    assert f"step '{step}'" in str(err.value)
    assert any(
        f.expectation == name
        and f.table == table
        and f.kwargs.get("column") == kwargs.get("column")
        for f in err.value.report.failures
    )
    assert (
        f"{name} {on}" in str(err.value)
        and "observed" in str(err.value)
        and "threshold" in str(err.value)
    )


def test_channel_stats_are_numpys_mean_and_std(sample_dataset):
    """The per-image channel means and stds of the sample table and the outlier filter (dot
    products, for speed) are numpy's own, computed in float64."""
    from bloodcell.data.stain import channel_means, channel_stats

    x = sample_dataset.images[::20]
    means, stds = channel_stats(x)
    np.testing.assert_allclose(means, x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(stds, x.astype(np.float64).std(axis=(1, 2)), rtol=1e-9)
    np.testing.assert_allclose(channel_means(x, block=7), means, rtol=1e-12)


def test_max_fraction_moves_the_per_class_limit(sample_dataset):
    """The per-class limit of filter_outliers is twice ``max_fraction`` (0.10 at the default 0.05,
    as it was when written as a constant), not a number of its own."""
    from bloodcell.data.outliers import OutlierConfig

    assert OutlierConfig().max_fraction == 0.05
    ds = sample_dataset
    basophils = np.flatnonzero(ds.labels == 0)
    lose = basophils[: int(0.15 * len(basophils))]  # 15% of one class, under 5% of the whole
    kept = ds.subset(np.setdiff1d(np.arange(len(ds)), lose))
    tbls = tables.filter_tables(ds, kept)
    assert tbls["summary"].removed_fraction[0] < 0.05
    at_default = failed("filter_outliers", tbls, max_fraction=0.05)
    assert len(at_default) == 1 and "classes.removed_fraction" in at_default[0]
    assert "(rule: classes.removed_fraction <= 0.1 (2 * max_fraction))" in at_default[0]
    assert failed("filter_outliers", tbls, max_fraction=0.08) == []  # limit 0.16
    report = validate("filter_outliers", tbls, SUITES["filter_outliers"], {"max_fraction": 0.08})
    assert report.results[1].kwargs["max_value"] == 0.16


def test_ingest_and_predict_input_share_the_model_input_block():
    """Written once under ``shared.model_input``; both suites hold all of it, ingest more."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "expectations.yaml").read_text())
    block = raw["shared"]["model_input"]
    assert "shared" not in SUITES
    assert len(block) >= 6
    assert SUITES["predict_input"]["samples"] == block
    ingest = SUITES["ingest"]["samples"]
    assert all(e in ingest for e in block) and len(ingest) > len(block)
    assert {"include": "model_input"} in raw["ingest"]["samples"]
    assert {"include": "model_input"} in raw["predict_input"]["samples"]


def test_an_unknown_include_is_a_clear_error(tmp_path):
    suites = tmp_path / "suites.yaml"
    suites.write_text("shared: {a: []}\ningest:\n  samples:\n    - include: b\n")
    with pytest.raises(ValueError, match=r"ingest.samples includes 'b', .*\(\['a'\]\)"):
        load_suites(suites)


def test_every_check_reads_as_a_rule_with_its_threshold(sample_dataset):
    metrics = tables.metrics_tables({"plain_accuracy": 0.91, "noisy_accuracy": 0.2})
    report = validate(
        "evaluate",
        metrics,
        SUITES["evaluate"],
        {"min_plain_accuracy": 0.3, "min_noisy_accuracy": 0.5},
    )
    assert report.summary().splitlines() == [
        "step 'evaluate': 1/2 expectations passed",
        "  passed  metrics.plain_accuracy 0.91 >= 0.3 (min_plain_accuracy)",
        "  FAILED  metrics.noisy_accuracy 0.2 >= 0.5 (min_noisy_accuracy)",
    ]
    ds = sample_dataset
    params = {**tables.shape_params(ds), **stain_params(None)}
    rules = [
        r.rule
        for r in validate("ingest", tables.ingest_tables(ds), SUITES["ingest"], params).results
    ]
    assert "samples.height == 96 (image_size)" in rules
    assert "samples.channels == 3" in rules
    assert "samples.dtype in ['uint8']" in rules
    assert "samples.id unique" in rules and "samples.id not null" in rules
    assert "0 <= samples.label <= 7 (max_label)" in rules
    assert "classes has 8 (num_classes) rows" in rules
    assert "140.0 (mean_r_min) <= samples.mean_r <= 255.0 (mean_r_max)" in rules
    # a stored report (before rules were kept) still loads and reads
    old = {
        "step": "train",
        "results": [
            {
                "table": "summary",
                "expectation": "expect_column_values_to_be_between",
                "kwargs": {"column": "best_val_accuracy", "min_value": 0.5},
                "success": True,
                "observed": "0 unexpected of 1, e.g. []",
            }
        ],
    }
    from bloodcell.data.validation import ValidationReport

    assert ValidationReport.from_dict(old).results[0].rule == "summary.best_val_accuracy >= 0.5"
