"""Step options follow one convention (``bloodcell.options``): one pydantic model per step's
options, defaults written once there, unknown keys rejected by one loader with a message that
names the key, where it is and the keys known there."""

from __future__ import annotations

import inspect

import pytest

from bloodcell.augment.online import OnlineAugment
from bloodcell.augment.rebalance import RebalanceConfig
from bloodcell.data.outliers import OutlierConfig
from bloodcell.model.adaptation import AdaptConfig
from bloodcell.model.referral import ReferralConfig
from bloodcell.model.training import TrainConfig, fine_tune_config
from bloodcell.options import Options

MODELS = (TrainConfig, OnlineAugment, AdaptConfig, ReferralConfig, OutlierConfig, RebalanceConfig)


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_options_model_rejects_unknown_keys_naming_them(cls):
    assert issubclass(cls, Options)
    with pytest.raises(ValueError, match=r"\['no_such_option'\] in .*; known: \[") as e:
        cls.from_dict({"no_such_option": 1})
    assert all(name in str(e.value) for name in cls.model_fields)


@pytest.mark.parametrize(
    "load,where",
    [
        (lambda o: TrainConfig.from_dict({"augment": o}), r"training\.augment"),
        (lambda o: fine_tune_config({"augment": o}), r"training\.augment"),
        (lambda o: AdaptConfig.from_dict({"augment": o}), r"adaptation\.augment"),
    ],
)
def test_nested_augment_options_are_checked_too(load, where):
    with pytest.raises(ValueError, match=rf"unknown augment option\(s\) \['stainn'\] in {where}"):
        load({"stainn": 0.3})


def test_a_bad_value_names_its_option():
    with pytest.raises(ValueError, match=r"training\.epochs"):
        TrainConfig.from_dict({"epochs": "many"})


@pytest.mark.parametrize(
    "step,cls,inputs",
    [
        ("filter_outliers", OutlierConfig, {"dataset", "features"}),
        ("rebalance", RebalanceConfig, {"train", "val", "test"}),
    ],
)
def test_flat_step_parameters_are_the_models_fields_with_its_defaults(step, cls, inputs):
    import importlib

    entry = getattr(importlib.import_module(f"steps.{step}"), step).entrypoint
    params = {
        n: p.default for n, p in inspect.signature(entry).parameters.items() if n not in inputs
    }
    assert list(params) == list(cls.model_fields)
    for name, f in cls.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default
        assert params[name] == default or (params[name] is None and not default), name


def test_fine_tune_defaults_sit_under_the_configs_options():
    cfg = fine_tune_config({"epochs": 3})
    assert (cfg.epochs, cfg.optimizer, cfg.learning_rate) == (3, "adamw", 1e-5)


def test_the_old_name_of_train_network_options_fails_naming_the_new_one(sample_dataset):
    from steps.train import train

    with pytest.raises(ValueError, match="'model' is now 'network'") as e:
        train.entrypoint(sample_dataset, sample_dataset, model={"filters": [8, 16, 32, 64]})
    assert "steps.train.parameters.network" in str(e.value)


def test_model_versions_made_before_the_rename_still_give_their_model():
    """Versions made before 0.2 hold the shipped model as ``tuned_model``."""
    from bloodcell import MODEL_ARTIFACT
    from bloodcell.mlops.registry import model_artifact

    class Version:  # a ZenML model version's lookup by artifact name
        def __init__(self, artifacts):
            self.artifacts = artifacts

        def get_artifact(self, name):
            return self.artifacts.get(name)

    assert model_artifact(Version({MODEL_ARTIFACT: "new", "tuned_model": "old"})) == "new"
    assert model_artifact(Version({"tuned_model": "old"})) == "old"
    assert model_artifact(Version({"test": "split"})) is None
