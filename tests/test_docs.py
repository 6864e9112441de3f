"""The user's documentation stays true to the code: every option in docs/configuration.md, every
file README.md points to exists."""

from __future__ import annotations

import inspect
import re

import pytest

from conftest import ROOT

CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def _documented(name: str) -> bool:
    return f"`{name}`" in CONFIGURATION


def _steps():
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

    return (
        ingest,
        filter_outliers,
        split,
        rebalance,
        train,
        fine_tune,
        ingest_external,
        evaluate,
        promote,
        ingest_unlabeled,
        predict,
        adapt,
    )


def _step_parameters():
    for step in _steps():
        for name, p in inspect.signature(step.entrypoint).parameters.items():
            if p.default is not inspect.Parameter.empty or name in ("source",):
                yield f"{step.name}.{name}", name


def _options():
    from bloodcell.augment.online import OnlineAugment
    from bloodcell.data.chunks import FanOut
    from bloodcell.model.adaptation import AdaptConfig
    from bloodcell.model.cnn import build_custom_cnn
    from bloodcell.model.referral import ReferralConfig
    from bloodcell.model.training import TrainConfig
    from bloodcell.model.transfer import build_transfer

    yield from ((f"training.{name}", name) for name in TrainConfig.model_fields)
    yield from ((f"augment.{name}", name) for name in OnlineAugment.model_fields)
    yield from ((f"adaptation.{name}", name) for name in AdaptConfig.model_fields)
    yield from ((f"referral.{name}", name) for name in ReferralConfig.model_fields)
    yield from ((f"fan_out.{name}", name) for name in FanOut.model_fields)
    for builder in (build_custom_cnn, build_transfer):
        for name in inspect.signature(builder).parameters:
            if name not in ("num_classes", "image_size", "name", "architecture"):
                yield f"{builder.__name__}.{name}", name


@pytest.mark.parametrize("where,name", [*_step_parameters(), *_options()])
def test_every_parameter_and_option_is_in_the_configuration_reference(where, name):
    assert _documented(name), f"{where} is not in docs/configuration.md"


def test_files_the_readme_points_to_exist():
    readme = (ROOT / "README.md").read_text()
    paths = set(
        re.findall(
            r"\b((?:benchmarks|experiments|configs|docs|pipelines|data)/[\w./-]+\.(?:py|yaml|md))",
            readme,
        )
    )
    assert paths, "README names no files?"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md points to missing files: {missing}"


# --- documented defaults -------------------------------------------------------------------------


def _tables() -> dict[str, dict[str, str]]:
    """docs/configuration.md's tables, keyed by what they document: a step name (the table under
    its heading), or the options class / builder its caption names; each maps an option to the
    text of its default column."""
    captions = {
        "`model` for `custom_cnn`": "build_custom_cnn",
        "`model` for `efficientnet_lite0`": "build_transfer",
        "`training` (": "TrainConfig",
        "`augment` (": "OnlineAugment",
        "| option | default | meaning |": None,
    }
    tables: dict[str, dict[str, str]] = {}
    key = None
    for line in CONFIGURATION.splitlines():
        heading = re.match(r"## `(\w+)`", line)
        if heading:
            key = heading.group(1)
        elif line.startswith("## Adaptation"):
            key = "AdaptConfig"
        elif line.startswith("## Reading the source a chunk at a time"):
            key = "FanOut"
        elif line.startswith("## "):
            key = None
        for caption, name in captions.items():
            if line.startswith(caption) and name:
                key = name
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 4 and re.fullmatch(
            r"`\w+`", cells[0]
        ):  # Batch inference: | step | parameter | default | ...
            tables.setdefault(cells[0].strip("`"), {})[cells[1].strip("`")] = cells[2]
        elif key and len(cells) == 3 and cells[0].startswith("`"):
            names = re.findall(r"`(\w+)`", cells[0])
            defaults = [cells[1]] if len(names) == 1 else [d.strip() for d in cells[1].split(",")]
            if len(defaults) == 1:
                defaults *= len(names)
            for name, default in zip(names, defaults):
                tables.setdefault(key, {})[name] = default
    return tables


def _literal(text: str):
    """The value a default column's text states, or ``...`` for a description ("PBC's", "below")."""
    import yaml

    quoted = text.startswith("`") and text.endswith("`")
    text = text.strip("`")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return ...
    if isinstance(value, str) and not quoted:
        try:
            return float(value)  # YAML 1.1 reads 3e-4 as a string
        except ValueError:
            return ...
    return value


def _same(documented, default) -> bool:
    if default is None:
        return documented in (None, {}, [])
    if isinstance(default, bool) or isinstance(documented, bool):
        return documented is default
    if isinstance(default, int | float) and isinstance(documented, int | float):
        return abs(documented - default) <= 1e-12 * max(1.0, abs(default))
    if isinstance(default, tuple | list):
        return list(documented or []) == list(default)
    return documented == default


def _defaults():
    """(table, option, the code's default) for every parameter and option with a default."""
    from bloodcell.augment.online import OnlineAugment
    from bloodcell.data.chunks import FanOut
    from bloodcell.model.adaptation import AdaptConfig
    from bloodcell.model.cnn import build_custom_cnn
    from bloodcell.model.referral import ReferralConfig
    from bloodcell.model.training import TrainConfig
    from bloodcell.model.transfer import build_transfer

    for step in _steps():
        for name, p in inspect.signature(step.entrypoint).parameters.items():
            if p.default is not inspect.Parameter.empty:
                yield step.name, name, p.default
    for cls in (TrainConfig, OnlineAugment, AdaptConfig, ReferralConfig, FanOut):
        for name, f in cls.model_fields.items():
            if f.default_factory is None:
                yield cls.__name__, name, f.default
    for builder in (build_custom_cnn, build_transfer):
        for name, p in inspect.signature(builder).parameters.items():
            if name not in ("num_classes", "image_size", "name", "architecture"):
                yield builder.__name__, name, p.default


def test_every_documented_default_is_the_codes():
    tables = _tables()
    compared, wrong = 0, []
    for table, name, default in _defaults():
        text = tables.get(table, {}).get(name)
        if (
            text is None
        ):  # a parameter documented in another table (Batch inference): named by the test above
            continue
        documented = _literal(text)
        if documented is ...:
            continue
        compared += 1
        if not _same(documented, default):
            wrong.append(f"{table}.{name}: documented {text}, the code's default is {default!r}")
    assert not wrong, "docs/configuration.md states defaults the code does not have:\n" + "\n".join(
        wrong
    )
    assert compared >= 80, (
        f"only {compared} documented defaults compared: has the table format changed?"
    )


def test_the_documented_config_snippets_are_valid():
    """Each YAML example in docs/configuration.md that configures train or fine_tune names real
    parameters, and its model and training options build and validate."""
    import yaml

    from bloodcell.model.build import build_model
    from bloodcell.model.training import TrainConfig, fine_tune_config
    from steps.fine_tune import fine_tune
    from steps.train import train

    checked = 0
    for block in re.findall(r"```yaml\n(.*?)```", CONFIGURATION, re.S):
        steps = (yaml.safe_load(block) or {}).get("steps", {})
        for step, spec in steps.items():
            params = spec.get("parameters", {})
            if step not in ("train", "fine_tune"):
                continue
            accepted = inspect.signature(
                (train if step == "train" else fine_tune).entrypoint
            ).parameters
            assert set(params) <= set(accepted), (
                f"{step}: unknown parameters {set(params) - set(accepted)}"
            )
            if step == "train":
                TrainConfig.from_dict(params.get("training"))
                model = {
                    **params.get("model", {}),
                    "weights": None,
                }  # the weights themselves: tests/test_models.py
                build_model(params.get("architecture", "custom_cnn"), 8, 96, **model)
            else:
                fine_tune_config(params.get("training"))
            checked += 1
    assert checked >= 2
