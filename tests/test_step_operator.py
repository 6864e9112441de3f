"""The local GPU step operator: the pool of GPU indices, and a real pipeline run through it (on
CPU)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bloodcell.mlops.step_operator import acquire_gpu

from sandbox import ZENML, make_sandbox, register_local_gpu_stack

PROBE = """
import os
from zenml import log_metadata, pipeline, step
from zenml.utils import source_utils


@step(enable_cache=False)
def where() -> int:
    log_metadata({"pid": os.getpid(),
                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                  "cwd": os.getcwd(), "source_root": source_utils.get_source_root()})
    return os.getpid()


@step(enable_cache=False)
def maybe_crash(pid: int) -> int:
    log_metadata({"pid": os.getpid(),
                  "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
    if os.environ.get("PROBE_CRASH"):
        raise ValueError("probe crash on purpose")
    return pid


@pipeline(enable_cache=False)
def probe() -> None:
    maybe_crash(where())
"""


def test_pool_hands_out_free_indices_and_waits_when_all_are_taken(tmp_path):
    locks = str(tmp_path / "locks")
    with acquire_gpu([0, 1], locks) as a, acquire_gpu([0, 1], locks) as b:
        assert (a, b) == (0, 1)
    order = []

    def second() -> None:
        with acquire_gpu([3], locks, poll_seconds=0.05, log=lambda msg: order.append("waiting")):
            order.append("second got 3")

    with acquire_gpu([3], locks):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first releases 3")
    t.join(5)
    assert order == ["waiting", "first releases 3", "second got 3"]
    with pytest.raises(ValueError, match="at least one GPU"), acquire_gpu([], locks):
        pass


@pytest.fixture(scope="module")
def gpu_project(tmp_path_factory):
    proj = make_sandbox(tmp_path_factory.mktemp("gpuproj"))
    (proj / "probe.py").write_text(PROBE)
    (proj / "probe.yaml").write_text(
        "steps:\n  where:\n    step_operator: gpu\n  maybe_crash:\n    step_operator: gpu\n"
    )
    locks = tmp_path_factory.mktemp("locks")
    register_local_gpu_stack(proj, "gpu", "gpu-local", "[0, 1]", locks)
    return proj


def _run_probe(proj: Path, crash: bool):
    env = {**os.environ, "PYTHONPATH": str(proj), "ZENML_LOGGING_COLORS_DISABLED": "true"}
    if crash:
        env["PROBE_CRASH"] = "1"
    proc = subprocess.Popen(
        [ZENML, "pipeline", "run", "probe.probe", "-c", "probe.yaml"],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=600)
    from zenml.client import Client

    return proc.pid, proc.returncode, out, Client().get_pipeline("probe").last_run


@pytest.mark.pipeline
def test_steps_run_in_their_own_processes_with_a_gpu(gpu_project):
    cli_pid, code, out, run = _run_probe(gpu_project, crash=False)
    assert code == 0, out.replace("│", "")[:12000]
    assert str(run.status) == "completed"
    pids = {name: s.run_metadata["pid"] for name, s in run.steps.items()}
    assert cli_pid not in pids.values() and len(set(pids.values())) == 2
    assert all(s.run_metadata["cuda_visible_devices"] in ("0", "1") for s in run.steps.values())
    assert "[local_gpu] step 'where' starts in a new process on GPU" in out
    # the step process works where the orchestrator does: the repository, its source root,
    # relative paths
    meta = run.steps["where"].run_metadata
    assert meta["cwd"] == meta["source_root"] == str(gpu_project.resolve())


@pytest.mark.pipeline
def test_a_crash_in_the_step_process_fails_the_run_with_its_traceback(gpu_project):
    _, code, out, run = _run_probe(gpu_project, crash=True)
    assert code != 0
    assert str(run.status) == "failed" and str(run.steps["maybe_crash"].status) == "failed"
    assert "step 'maybe_crash' failed in its process" in out
    assert "ValueError: probe crash on purpose" in out and "Traceback" in out
