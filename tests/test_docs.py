"""The user's documentation stays true to the code: every option in docs/configuration.md, every
file README.md points to exists."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields

import pytest

from conftest import ROOT

CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def _documented(name: str) -> bool:
    return f"`{name}`" in CONFIGURATION


def _step_parameters():
    from steps.adapt import adapt
    from steps.evaluate import evaluate
    from steps.filter_outliers import filter_outliers
    from steps.fine_tune import fine_tune
    from steps.ingest import ingest
    from steps.ingest_external import ingest_external
    from steps.ingest_unlabeled import ingest_unlabeled
    from steps.predict import predict
    from steps.promote import promote
    from steps.rebalance import rebalance
    from steps.split import split
    from steps.train import train

    for step in (ingest, filter_outliers, split, rebalance, train, fine_tune, ingest_external, evaluate, promote,
                 ingest_unlabeled, predict, adapt):
        for name, p in inspect.signature(step.entrypoint).parameters.items():
            if p.default is not inspect.Parameter.empty or name in ("source",):
                yield f"{step.name}.{name}", name


def _options():
    from bloodcell.adaptation import AdaptConfig
    from bloodcell.augment.online import OnlineAugment
    from bloodcell.models import build_custom_cnn, build_transfer
    from bloodcell.training import TrainConfig

    yield from ((f"training.{f.name}", f.name) for f in fields(TrainConfig))
    yield from ((f"augment.{f.name}", f.name) for f in fields(OnlineAugment))
    yield from ((f"adaptation.{f.name}", f.name) for f in fields(AdaptConfig))
    for builder in (build_custom_cnn, build_transfer):
        for name in inspect.signature(builder).parameters:
            if name not in ("num_classes", "image_size", "name", "architecture"):
                yield f"{builder.__name__}.{name}", name


@pytest.mark.parametrize("where,name", [*_step_parameters(), *_options()])
def test_every_parameter_and_option_is_in_the_configuration_reference(where, name):
    assert _documented(name), f"{where} is not in docs/configuration.md"


def test_files_the_readme_points_to_exist():
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"\b((?:benchmarks|experiments|configs|docs|pipelines|data)/[\w./-]+\.(?:py|yaml|md))", readme))
    assert paths, "README names no files?"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md points to missing files: {missing}"
