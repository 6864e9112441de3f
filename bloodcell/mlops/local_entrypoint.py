"""ZenML's step entrypoint, for a step run in a local process by the ``local_gpu`` step operator.

ZenML's entrypoint prepares a container: it changes to ``/app`` (creating it, which fails for a
user who is not root) and may download the code. A local process needs neither: the code is the
orchestrator's own, on the same disk. This keeps the orchestrator's working directory, so the
ZenML repository, the source root and relative paths in the config resolve as they do for steps
that run in the orchestrator, and then runs ZenML's entrypoint unchanged.
"""

from __future__ import annotations

import os
import sys

from zenml.entrypoints import base_entrypoint_configuration
from zenml.entrypoints.entrypoint import main


def _prepare_local_code_environment(self) -> None:  # noqa: ARG001 - the method's signature
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


if __name__ == "__main__":
    base_entrypoint_configuration.BaseEntrypointConfiguration.prepare_code_environment = (
        _prepare_local_code_environment
    )
    main()
