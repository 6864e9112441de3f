"""Where an interrupted training step keeps its Keras ``BackupAndRestore`` state.

The directory is keyed by the step's inputs and parameters, so rerunning the same pipeline after
an interruption resumes from the last finished epoch; Keras deletes it when ``fit`` completes.
It lives under the active artifact store when that is a local path, otherwise under the ZenML
config directory (``training.backup_dir`` in the config overrides both).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def backup_dir(step: str, *keys: Any) -> str:
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    root = Client().active_stack.artifact_store.path
    if "://" in root:
        root = GlobalConfiguration().config_directory
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, "checkpoints", step, digest)
