"""The stack scripts in configs/stacks are not run here (no cluster, no cloud account). What can be
checked offline is checked: every ``zenml <component> register`` line names a flavor that the
installed ZenML has for that component type, and every option it sets is a field of that flavor's
config, so a script cannot drift from the ZenML version the project pins."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "configs" / "stacks").glob("*.sh"))
FLAVOR_MODULES = (
    "zenml.integrations.kubernetes.flavors",
    "zenml.integrations.gcp.flavors",
    "zenml.integrations.aws.flavors",
    "zenml.integrations.s3.flavors",
    "zenml.container_registries",
    "zenml.image_builders",
)


def _flavors() -> dict[tuple[str, str], set[str]]:
    """(component type, flavor name) -> the option names of its config."""
    out = {}
    for name in FLAVOR_MODULES:
        module = importlib.import_module(name)
        for attr in dir(module):
            cls = getattr(module, attr)
            if attr.endswith("Flavor") and isinstance(cls, type) and attr != "Flavor":
                try:
                    flavor = cls()
                    out[(flavor.type.value, flavor.name)] = set(flavor.config_class.model_fields)
                except TypeError:  # abstract base flavors
                    continue
    return out


def _register_lines(script: Path) -> list[tuple[str, list[str], dict[str, str]]]:
    """(component type, flavor candidates, options) of each ``zenml ... register`` line; a flavor
    given as a shell variable has the values the script assigns to it as candidates."""
    text = script.read_text()
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*zenml ([a-z-]+) register \S+ (.*)", line)
        if not m or m.group(1) == "stack":
            continue
        options = {}
        for token in shlex.split(m.group(2)):
            if token.startswith("--") and "=" in token:
                key, value = token[2:].split("=", 1)
                options[key] = value
        flavor = options.pop("flavor")
        if flavor.startswith("$"):
            candidates = re.findall(rf"\b{re.escape(flavor.strip('${}'))}=(\w+)", text)
        else:
            candidates = [flavor]
        out.append((m.group(1).replace("-", "_"), candidates, options))
    return out


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_stack_scripts_use_flavors_and_options_zenml_has(script):
    flavors = _flavors()
    lines = _register_lines(script)
    assert len(lines) >= 4, f"{script.name}: expected the register lines of a stack"
    for component, candidates, options in lines:
        assert candidates, f"{script.name}: a {component} flavor the script never sets"
        for flavor in candidates:
            assert (component, flavor) in flavors, (
                f"{script.name}: ZenML has no {component} flavor {flavor!r}"
            )
            unknown = set(options) - flavors[(component, flavor)]
            assert not unknown, (
                f"{script.name}: {component} flavor {flavor!r} has no option(s) {sorted(unknown)}"
            )


def test_the_s3_endpoint_option_of_kubernetes_sh_is_the_s3_stores():
    """kubernetes.sh passes an S3-compatible server's endpoint through the store's client_kwargs."""
    text = (ROOT / "configs" / "stacks" / "kubernetes.sh").read_text()
    assert "--client_kwargs=" in text and "client_kwargs" in _flavors()[("artifact_store", "s3")]


def _printed_config(script: Path) -> dict:
    """The pipeline config a stack script prints (its ``cat <<YAML`` block), with the script's
    default values for its variables."""
    import yaml

    text = script.read_text()
    defaults = {
        m.group(1): m.group(2).strip("'")
        for m in re.finditer(r"^(\w+)=\$\{\w+:-(.*?)\}\s*(?:#.*)?$", text, re.M)
    }
    block = text.split("cat <<YAML\n", 1)[1].split("\nYAML", 1)[0].split("\n", 1)[1]
    return yaml.safe_load(re.sub(r"\$(\w+)", lambda m: defaults[m.group(1)], block))


def test_the_config_kubernetes_sh_prints_is_one_zenml_and_the_pipeline_take():
    """Every key of the printed config is a field of the installed ZenML's run configuration, of
    the Kubernetes settings or of the pipeline (its steps and its fan_out options)."""
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.enums import StepRuntime
    from zenml.integrations.kubernetes.flavors import (
        KubernetesOrchestratorSettings,
        KubernetesStepOperatorSettings,
    )
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    from bloodcell.data.chunks import FanOut
    from pipelines.training import STEPS

    cfg = _printed_config(ROOT / "configs" / "stacks" / "kubernetes.sh")
    PipelineRunConfiguration.model_validate(cfg)  # top-level and step-level keys, runtime values
    FanOut.from_dict(cfg["parameters"]["fan_out"])
    assert int(cfg["environment"]["ZENML_DYNAMIC_PIPELINE_WORKER_COUNT"]) >= 1
    assert set(cfg["steps"]) <= {s.name for s in STEPS}
    kinds = {
        "orchestrator": KubernetesOrchestratorSettings,
        "step_operator": KubernetesStepOperatorSettings,
    }
    blocks = [cfg["settings"]] + [s.get("settings", {}) for s in cfg["steps"].values()]
    for settings in blocks:  # names only: the values' validators need the kubernetes client
        for kind, values in settings.items():
            assert set(values) <= set(kinds[kind].model_fields), (kind, values)
            pod = values.get("pod_settings", {})
            assert set(pod) <= set(KubernetesPodSettings.model_fields), pod
    for name in ("ingest_chunk", "score_chunk"):  # the chunks run as pods of their own
        assert StepRuntime(cfg["steps"][name]["runtime"]) == StepRuntime.ISOLATED
