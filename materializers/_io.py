"""Small helpers shared by the materializers: JSON, .npy and PNG files in the artifact store."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def write_json(mat: Any, name: str, obj: Any) -> str:
    path = os.path.join(mat.uri, name)
    with mat.artifact_store.open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def read_json(mat: Any, name: str) -> Any:
    with mat.artifact_store.open(os.path.join(mat.uri, name), "r") as f:
        return json.load(f)


def write_npy(mat: Any, name: str, arr: np.ndarray) -> None:
    with mat.artifact_store.open(os.path.join(mat.uri, name), "wb") as f:
        np.save(f, arr, allow_pickle=False)


def read_npy(mat: Any, name: str) -> np.ndarray:
    with mat.artifact_store.open(os.path.join(mat.uri, name), "rb") as f:
        return np.load(f, allow_pickle=False)


def read_text(mat: Any, name: str) -> str:
    with mat.artifact_store.open(os.path.join(mat.uri, name), "r") as f:
        return f.read()


def write_bytes(mat: Any, name: str, data: bytes) -> str:
    path = os.path.join(mat.uri, name)
    with mat.artifact_store.open(path, "wb") as f:
        f.write(data)
    return path


def write_text(mat: Any, name: str, text: str) -> str:
    path = os.path.join(mat.uri, name)
    with mat.artifact_store.open(path, "w") as f:
        f.write(text)
    return path
