"""Shared fixtures. ZenML gets a throw-away global config for the whole test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports zenml: never touch the user's ZenML config or send analytics.
_ZEN_HOME = tempfile.mkdtemp(prefix="bloodcell-zenml-")
os.environ["ZENML_CONFIG_PATH"] = _ZEN_HOME
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import sandbox  # noqa: E402

sandbox.INIT_IN_PROCESS = True  # ZENML_CONFIG_PATH is this session's for good (above)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture(scope="session")
def zen_home() -> str:
    return _ZEN_HOME


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_dataset():
    from bloodcell.data.ingest import read_source

    return read_source(SAMPLE)


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    """A writable copy of 3 real images of each class."""
    dst = tmp_path / "cells"
    for cls_dir in sorted(SAMPLE.iterdir()):
        if cls_dir.is_dir():
            (dst / cls_dir.name).mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:3]:
                shutil.copy(f, dst / cls_dir.name / f.name)
    return dst


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_ZEN_HOME, ignore_errors=True)


__all__ = ["ROOT", "SAMPLE", "np"]
