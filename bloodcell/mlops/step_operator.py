"""A local GPU step operator flavor: each step it runs gets a fresh local process and one GPU.

ZenML ships none. Register and use it with

    zenml step-operator flavor register bloodcell.mlops.step_operator.LocalGPUStepOperatorFlavor
    zenml step-operator register gpu --flavor=local_gpu --gpus='[0, 1]'
    zenml stack register gpu-local -o default -a default -s gpu --set

(or ``make stack-gpu-local``), then put steps on it from the YAML:
``steps.<name>.step_operator: gpu``.

A step takes the first free GPU index of the pool (a file lock per index, so concurrent runs and
steps share the pool safely; a step waits while all are taken), runs with ``CUDA_VISIBLE_DEVICES``
set to it, its output is streamed to the step's logs, and a non-zero exit fails the step with the
end of the process's output (its traceback).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from zenml.step_operators import BaseStepOperator, BaseStepOperatorConfig, BaseStepOperatorFlavor

if TYPE_CHECKING:
    from zenml.config.step_run_info import StepRunInfo

FLAVOR = "local_gpu"
ZENML_ENTRYPOINT = "zenml.entrypoints.entrypoint"
LOCAL_ENTRYPOINT = "bloodcell.mlops.local_entrypoint"


class LocalGPUStepOperatorConfig(BaseStepOperatorConfig):
    """``gpus``: the pool of GPU indices; ``lock_dir``: where the per-GPU lock files live."""

    gpus: list[int] = [0]
    lock_dir: str = str(Path.home() / ".cache" / "bloodcell" / "gpu-locks")
    poll_seconds: float = 1.0

    @property
    def is_local(self) -> bool:
        return True


@contextlib.contextmanager
def acquire_gpu(
    gpus: list[int], lock_dir: str, poll_seconds: float = 1.0, log=print
) -> Iterator[int]:
    """Hold an exclusive lock on the first free GPU index of ``gpus``; wait while all are taken."""
    if not gpus:
        raise ValueError("the local_gpu step operator needs at least one GPU index in `gpus`")
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for gpu in gpus:
            with open(Path(lock_dir) / f"gpu{gpu}.lock", "w") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    yield gpu
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        if not waited:
            log(f"all GPUs {gpus} are busy; waiting for one to free up")
            waited = True
        time.sleep(poll_seconds)


class LocalGPUStepOperator(BaseStepOperator):
    @property
    def config(self) -> LocalGPUStepOperatorConfig:
        return self._config  # type: ignore[return-value]

    def launch(
        self, info: StepRunInfo, entrypoint_command: list[str], environment: dict[str, str]
    ) -> None:
        name = info.pipeline_step_name
        with acquire_gpu(self.config.gpus, self.config.lock_dir, self.config.poll_seconds) as gpu:
            env = {**os.environ, **environment, "CUDA_VISIBLE_DEVICES": str(gpu)}
            if entrypoint_command and entrypoint_command[0] in ("python", "python3"):
                # the same interpreter (and so the same environment) as the orchestrator
                entrypoint_command = [sys.executable, *entrypoint_command[1:]]
            if entrypoint_command[1:3] == ["-m", ZENML_ENTRYPOINT]:
                # ZenML's entrypoint, minus its container set-up (cd /app): see
                # bloodcell.mlops.local_entrypoint
                entrypoint_command = [
                    entrypoint_command[0],
                    "-m",
                    LOCAL_ENTRYPOINT,
                    *entrypoint_command[3:],
                ]
            print(f"[local_gpu] step '{name}' starts in a new process on GPU {gpu}", flush=True)
            proc = subprocess.Popen(
                entrypoint_command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            tail: deque[str] = deque(maxlen=60)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                tail.append(line)
            code = proc.wait()
        if code != 0:
            raise RuntimeError(
                f"step '{name}' failed in its process on GPU {gpu} (exit code {code}); its last "
                "output:\n" + "".join(tail)
            )


class LocalGPUStepOperatorFlavor(BaseStepOperatorFlavor):
    @property
    def name(self) -> str:
        return FLAVOR

    @property
    def config_class(self) -> type[LocalGPUStepOperatorConfig]:
        return LocalGPUStepOperatorConfig

    @property
    def implementation_class(self) -> type[LocalGPUStepOperator]:
        return LocalGPUStepOperator
