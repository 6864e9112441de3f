"""Every cached step's cache key covers the project code it runs.

``steps/_cache.py`` computes a step's key modules by reading the sources; the test below finds
the modules each step module actually loads by importing it in a fresh interpreter, so a module
the reading misses fails here. tests/test_pipeline_e2e.py::test_caching sees a real edit rerun
``train``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

from steps._cache import PROJECT_PACKAGES, import_closure

from conftest import ROOT

CACHED_STEPS = {
    "ingest_chunk",
    "score_chunk",
    "gather_chunks",
    "filter_outliers",
    "split",
    "rebalance",
    "train",
    "fine_tune",
    "evaluate",
    "adapt",
    "recalibrate",
}
STEP_MODULES = sorted(
    f"steps.{p.stem}" for p in (ROOT / "steps").glob("*.py") if not p.stem.startswith("_")
)

# For each module named: forget every project module, import it, list the project modules loaded.
_LOADED = textwrap.dedent("""
    import json, sys
    from zenml.utils import source_utils
    source_utils.set_custom_source_root(sys.argv[1])
    sys.path.insert(0, sys.argv[1])
    packages = tuple(sys.argv[2].split(","))
    out = {}
    for module in sys.argv[3:]:
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]
        __import__(module)
        out[module] = sorted(m for m in sys.modules if m.split(".")[0] in packages)
    print("LOADED " + json.dumps(out))
""")


def _loaded_by_import() -> dict[str, set[str]]:
    res = subprocess.run(
        [sys.executable, "-c", _LOADED, str(ROOT), ",".join(PROJECT_PACKAGES), *STEP_MODULES],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(line for line in res.stdout.splitlines() if line.startswith("LOADED "))
    return {k: set(v) for k, v in json.loads(line[len("LOADED ") :]).items()}


def _steps_of(module_name: str):
    from zenml.steps import BaseStep

    module = importlib.import_module(module_name)
    for obj in vars(module).values():
        if isinstance(obj, BaseStep) and obj.entrypoint.__module__ == module_name:
            yield obj


def test_every_cached_step_key_covers_every_module_its_code_loads():
    loaded = _loaded_by_import()
    seen = set()
    for module_name in STEP_MODULES:
        for step in _steps_of(module_name):
            if step.configuration.enable_cache is False:
                continue
            seen.add(step.name)
            policy = step.configuration.cache_policy
            key = {source.import_path for source in policy.source_dependencies}
            missing = loaded[module_name] - key
            assert not missing, (
                f"step {step.name}: {sorted(missing)} run with it but are not in its cache key"
            )
            assert module_name in key and "bloodcell.data.dataset" in key
            assert (
                policy.file_dependencies == ["configs/expectations.yaml"]
                and policy.include_artifact_ids is False
            )
    assert seen == CACHED_STEPS


def test_train_key_holds_the_framing_layer_it_trains_with():
    """The issue that started this: bloodcell.model.normalize (CellFraming runs inside the trained
    model) was missing from train's hand-kept list; filter_outliers missed bloodcell.data.stain."""
    from steps.filter_outliers import filter_outliers
    from steps.train import train

    def key(step):
        return {s.import_path for s in step.configuration.cache_policy.source_dependencies}

    assert {
        "bloodcell.model.normalize",
        "bloodcell.model.build",
        "bloodcell.model.training",
        "materializers.keras_materializer",
    } <= key(train)
    assert "bloodcell.data.stain" in key(filter_outliers)


def test_import_closure_follows_every_kind_of_import(tmp_path):
    pkg = tmp_path / "proj"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "VERSION = 1\n",
        "step.py": "import os\nimport numpy as np\nfrom proj import direct\n"
        "from .sub import relative\n"
        "def run():\n    from proj.lazy import thing  # inside a function\n    return thing\n",
        "direct.py": "from proj.deep import CONSTANT  # a name, not a module: deep is the module\n",
        "deep.py": "CONSTANT = 3\nimport proj.step  # a cycle\n",
        "lazy.py": "thing = 1\n",
        "unused.py": "import proj.step\n",
        "sub/__init__.py": "",
        "sub/relative.py": "from ..direct import *\nfrom . import sibling\n",
        "sub/sibling.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    closure = import_closure("proj.step", tmp_path, packages=("proj",))
    assert closure == [
        "proj",
        "proj.deep",
        "proj.direct",
        "proj.lazy",
        "proj.step",
        "proj.sub",
        "proj.sub.relative",
        "proj.sub.sibling",
    ]
    assert import_closure("proj.lazy", tmp_path, packages=("proj",)) == ["proj", "proj.lazy"]
