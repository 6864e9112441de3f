"""Metadata on the run's model version (Model Control Plane) and on the run (its code version)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from zenml import get_step_context, log_metadata


def log_to_model(metadata: dict[str, Any]) -> None:
    """Log ``metadata`` on the model version this run produces."""
    log_metadata(metadata, infer_model=True)


SOURCE_DIRS = ("bloodcell", "steps", "pipelines", "materializers", "configs")


def code_version(root: str) -> str:
    """``git <commit>[+dirty]`` where the project is a git checkout, and a SHA-256 of the project's
    sources either way (what ran, even from an uncommitted tree)."""
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        for path in sorted(Path(root, d).rglob("*")):
            if path.suffix in (".py", ".yaml", ".yml") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    parts = []
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", root, "status", "--porcelain", "--", *SOURCE_DIRS],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            parts.append(f"git {commit.stdout.strip()}{'+dirty' if dirty else ''}")
    except (OSError, subprocess.SubprocessError):
        pass
    parts.append(f"sources sha256 {h.hexdigest()[:16]}")
    return ", ".join(parts)


def log_code_version() -> str:
    """Record the code version on the pipeline run (read back by ``bloodcell lineage``)."""
    from zenml.utils import source_utils

    version = code_version(source_utils.get_source_root())
    log_metadata(
        {"code_version": version}, run_id_name_or_prefix=get_step_context().pipeline_run.id
    )
    return version
