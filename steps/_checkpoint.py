"""Where a training step keeps its Keras ``BackupAndRestore`` state, one folder per run.

The folders of one step and one set of inputs and parameters live side by side under
``checkpoints/<step>/<digest of the inputs>/``, each with a lock file that the run using it holds
(``flock``; the kernel releases it when the process ends, even on SIGKILL). A run takes the most
recently written folder whose lock is free (one an interrupted run left: it resumes from its last
finished epoch) or else makes a new one, so two runs of the same config at once each write their
own backup instead of colliding. A folder is deleted when its fit completes; a failed or killed
fit leaves it for the next run.

The folders live under the active artifact store when that is a local path, otherwise under the
ZenML config directory (``training.backup_dir`` in the config replaces all of this with one
folder of the user's).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

from zenml.logger import get_logger

logger = get_logger(__name__)


def backups_root(step: str, *keys: Any) -> str:
    """``<root>/checkpoints/<step>/<digest of keys>``: the folder of this step's backup slots."""
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    root = Client().active_stack.artifact_store.path
    if "://" in root:
        root = GlobalConfiguration().config_directory
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, "checkpoints", step, digest)


def _last_written(folder: str) -> float:
    times = [os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files]
    return max(times, default=os.path.getmtime(folder))


def _try_lock(path: str) -> IO[str] | None:
    handle = open(path, "a")  # noqa: SIM115 - held open for as long as the slot is in use
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _remove(slot: str) -> None:
    shutil.rmtree(slot, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{slot}.lock")


def _claim(base: str) -> tuple[str, IO[str]]:
    """An interrupted run's slot (the most recently written one no process holds), else a new one."""
    slots = [e.path for e in os.scandir(base) if e.is_dir()]
    for slot in sorted(slots, key=_last_written, reverse=True):
        lock = _try_lock(f"{slot}.lock")
        if lock is None:
            logger.info("Backup %s belongs to a run in progress; this run keeps its own", slot)
            continue
        if os.path.isdir(slot) and any(os.scandir(slot)):
            return slot, lock
        _remove(slot)  # an empty or vanished slot: nothing to resume
        lock.close()
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    slot = os.path.join(base, name)
    lock = _try_lock(f"{slot}.lock")  # locked before the folder exists: no other run can take it
    assert lock is not None, slot
    os.makedirs(slot)
    return slot, lock


@contextlib.contextmanager
def slot_in(base: str, step: str = "fit") -> Iterator[str]:
    """A backup folder under ``base`` for one fit, held for the ``with`` block (an interrupted
    run's, to resume from, or a new one) and deleted if the block completes."""
    os.makedirs(base, exist_ok=True)
    slot, lock = _claim(base)
    resumed = any(os.scandir(slot))
    logger.info("%s backups in %s (%s)", step, slot, "resuming an interrupted run" if resumed else "a new fit")
    try:
        yield slot
        _remove(slot)  # done: nothing to resume (removed while still locked)
    finally:
        lock.close()


@contextlib.contextmanager
def backup_slot(step: str, *keys: Any, folder: str | None = None) -> Iterator[str]:
    """The backup folder of one fit of ``step`` on ``keys`` (its inputs and parameters), as
    ``slot_in``; ``folder`` (the config's ``backup_dir``), where set, is used as it is."""
    if folder is not None:
        yield folder
        return
    with slot_in(backups_root(step, *keys), step) as slot:
        yield slot
