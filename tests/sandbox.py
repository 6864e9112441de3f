"""A throw-away copy of the project with its own ZenML repo, for tests (and the benchmarks
that time whole pipeline runs).

The copy has the project's sources, configs and the shipped sample, so a caller can change an
image or a source file there without touching the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bloodcell.mlops.runlog import failure_lines

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("bloodcell", "steps", "materializers", "pipelines", "configs")
ZENML = str(Path(sys.executable).parent / "zenml")
# tests/conftest.py sets this: the test session's ZenML config is fixed before zenml is imported, so
# `zenml init` can be ZenML's own call in this process (what the CLI runs) instead of a subprocess
# that imports zenml afresh (5 to 14 s a sandbox on 2 CPU cores). The benchmarks point
# ZENML_CONFIG_PATH elsewhere after their import and keep the subprocess.
INIT_IN_PROCESS = False


def make_sandbox(dst: Path) -> Path:
    """Copy the project into ``dst`` and ``zenml init`` it (with the caller's ZENML_CONFIG_PATH)."""
    for d in SOURCES:
        shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data" / "sample", dst / "data" / "sample")
    if INIT_IN_PROCESS:
        from zenml.client import Client

        Client.initialize(root=dst)  # what `zenml init` runs
    else:
        zenml(dst, "init")
    return dst


def zenml(
    proj: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the ``zenml`` CLI in ``proj``, importing the project's code from there."""
    full_env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": str(proj),
        "ZENML_LOGGING_COLORS_DISABLED": "true",
    }
    res = subprocess.run(
        [ZENML, *args], cwd=proj, env=full_env, capture_output=True, text=True, timeout=1800
    )
    if check and res.returncode != 0:
        raise RuntimeError(
            f"zenml {' '.join(args)} failed ({res.returncode}):\n"
            f"{failure_lines(res.stdout + res.stderr)}"
        )
    return res


def register_local_gpu_stack(proj: Path, operator: str, stack: str, gpus: str, lock_dir: Path):
    """What `make stack-gpu-local` does, in ``proj``: the local_gpu step operator flavor, an
    operator ``operator`` over ``gpus`` (``"[0, 1]"``) with its locks in ``lock_dir``, and the
    stack ``stack`` (default orchestrator and artifact store, that operator), set active."""
    flavor = "bloodcell.mlops.step_operator.LocalGPUStepOperatorFlavor"
    zenml(proj, "step-operator", "flavor", "register", flavor, check=False)  # once per store
    zenml(
        proj,
        "step-operator",
        "register",
        operator,
        "--flavor=local_gpu",
        f"--gpus={gpus}",
        f"--lock_dir={lock_dir}",
    )
    zenml(
        proj, "stack", "register", stack, "-o", "default", "-a", "default", "-s", operator, "--set"
    )


def tiny_config(proj: Path, model: str | None = None, **evaluate: object) -> dict:
    """The quickstart config of ``proj`` trained for two epochs, with every quality floor at zero
    (two epochs make no usable model; the floors are tested with real values elsewhere), as a
    dict; ``model``: its own registered model name; ``evaluate``: more evaluate parameters."""
    import yaml

    cfg = yaml.safe_load((proj / "configs" / "quickstart.yaml").read_text())
    cfg["steps"]["train"]["parameters"]["training"].update(
        epochs=2, swa_epochs=1, recalibrate_samples_per_epoch=64
    )
    cfg["steps"]["train"]["parameters"]["min_val_accuracy"] = 0.0
    cfg["steps"]["fine_tune"]["parameters"]["min_val_accuracy"] = 0.0
    cfg["steps"]["evaluate"]["parameters"].update(
        min_plain_accuracy=0.0, min_noisy_accuracy=0.0, **evaluate
    )
    if model:
        cfg["model"] = {"name": model}
    return cfg
